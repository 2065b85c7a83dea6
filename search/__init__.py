"""Search and pictures application: image indexes (FAISS) and drawn grids, used by scripts/."""
