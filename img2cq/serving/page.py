"""The web page for people: GET / (plain HTML, CSS and JS from ``static/``, no build step, nothing
loaded from elsewhere) and the limits it checks a picture against before uploading it. The page
itself calls ``POST /generate?embed=png,step,stl``. Needs neither a database nor a model to load."""

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")


@router.get("/page/limits")
async def limits(request: Request) -> dict:
    """What the page checks before it uploads a picture (the server checks again)."""
    settings = request.app.state.settings
    return {"max_image_bytes": settings.max_image_bytes, "max_image_pixels": settings.max_image_pixels,
            "max_image_side": settings.max_image_side, "model_configured": request.app.state.model_dir is not None}


def static_files() -> StaticFiles:
    """The page's files, mounted at /static."""
    return StaticFiles(directory=STATIC_DIR)
