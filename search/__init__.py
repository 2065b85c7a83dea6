"""Search application: image indexes (FAISS, index.py), the one query path (query.py), the web app (app.py, static/)
and drawn grids (pictures.py), used by scripts/ and bench/."""
