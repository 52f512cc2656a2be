"""The HTTP server of `tinyroberta-es serve`: a FastAPI app that schedules windows from many requests into
token-budgeted model calls, with probes, metrics, graceful shutdown and a web page.

Needs the `serve` extra (``pip install tinyroberta-es[serve]``): FastAPI, uvicorn, prometheus-client and
fastapi-offline (Swagger UI's files, so /docs works offline). The submodules import them, so this package
itself imports nothing heavy.
"""
