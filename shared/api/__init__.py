"""The node's HTTP API (``hodlai api``): one FastAPI app on uvicorn to which every executor
adds its router (entry-point group ``hodlai.routers``, see :mod:`shared.api.routers`).

Guarantees, for every route any executor adds:

- Errors are JSON ``{"error": code, "message": text}`` with a fitting status code; the core's
  errors are translated in one place (:mod:`shared.api.errors`), and an unexpected error is a
  500 whose body says nothing about its cause (the log does).
- A write route depends on :data:`shared.api.auth.Operator`: without a bearer token from the
  operator tokens file it answers 401 before its body runs. Tokens never reach a log.
- The process binds 127.0.0.1 unless ``HODLAI_API_HOST`` says otherwise, and sends no CORS
  headers unless ``HODLAI_API_CORS_ORIGINS`` lists origins.

The app factory is :func:`shared.api.app.create_app`; the process is :mod:`shared.api.server`.
Nothing is imported here, so that ``hodlai --help`` does not load FastAPI.
"""
