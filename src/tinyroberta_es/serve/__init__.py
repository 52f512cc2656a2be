"""The HTTP server of `tinyroberta-es serve`: a FastAPI app with server-side micro-batching and a web page.

Needs the `serve` extra (``pip install tinyroberta-es[serve]``): FastAPI, uvicorn and prometheus-client. The
submodules import them, so this package itself imports nothing heavy.
"""
