"""The HTTP service: settings, the scheduling API, the model API and its request batcher.
``server.py`` composes them into the ``uvicorn server:app`` application."""
