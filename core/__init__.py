"""Foundation: config schema and loading, registry, distributed helpers, logging, small utilities.

Imports nothing of the project (see docs/ARCHITECTURE.md).
"""
