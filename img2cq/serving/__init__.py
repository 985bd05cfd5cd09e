"""The model service over HTTP: settings, the model and metrics API and its request batcher.
``server.py`` composes them into the ``uvicorn server:app`` application."""
