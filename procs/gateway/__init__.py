"""gateway — read-only HTTP access to an instance for remote observers (FastAPI on uvicorn; the API documents
itself at ``/docs``). It maps shared memory read-only through :mod:`procs.views.gateway_source`: never a second
writer, never the ledger. ``app`` builds the FastAPI application; ``__main__`` is the supervised process."""
