"""The Ollama routes: each binds a method of :class:`OllamaServing` to HTTP (the body it takes,
the client's disconnect, the stream's framing); the model-management routes are refused. A
route's ``response_model`` documents its answer in the OpenAPI document; the answer is
serialised by the serving method's model, not again."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from slm_runtime.api.auth import bearer_auth
from slm_runtime.api.ollama.protocol import (
    ChatRequest,
    ChatResponse,
    EmbeddingResponse,
    EmbeddingsRequest,
    EmbedRequest,
    EmbedResponse,
    GenerateRequest,
    GenerateResponse,
    PsResponse,
    ShowRequest,
    ShowResponse,
    TagsResponse,
    VersionResponse,
)
from slm_runtime.api.ollama.serving import OllamaServing
from slm_runtime.api.reply import framed, ndjson, whole
from slm_runtime.errors import model_managed
from slm_runtime.state import disconnection


async def _serving(request: Request) -> OllamaServing:
    serving: OllamaServing = request.app.state.ollama
    return serving


Serving = Annotated[OllamaServing, Depends(_serving)]


def build_router(api_token: str | None) -> APIRouter:
    """The Ollama routes, behind the API token when one is set."""
    router = APIRouter(dependencies=[Depends(bearer_auth(api_token))])

    @router.post("/api/generate", response_model=GenerateResponse)
    async def generate(body: GenerateRequest, request: Request, serving: Serving) -> Response:
        answer = await serving.generate(body, disconnection(request))
        return framed(answer, ndjson)

    @router.post("/api/chat", response_model=ChatResponse)
    async def chat(body: ChatRequest, request: Request, serving: Serving) -> Response:
        answer = await serving.chat(body, disconnection(request))
        return framed(answer, ndjson)

    @router.post("/api/embed", response_model=EmbedResponse)
    async def embed(body: EmbedRequest, serving: Serving) -> Response:
        return whole(await serving.embed(body))

    @router.post("/api/embeddings", response_model=EmbeddingResponse)
    async def embeddings(body: EmbeddingsRequest, serving: Serving) -> Response:
        return whole(await serving.embeddings(body))

    @router.get("/api/tags", response_model=TagsResponse)
    async def tags(serving: Serving) -> Response:
        return whole(serving.tags())

    @router.post("/api/show", response_model=ShowResponse)
    async def show(body: ShowRequest, serving: Serving) -> Response:
        return whole(serving.show(body))

    @router.get("/api/ps", response_model=PsResponse)
    async def ps(serving: Serving) -> Response:
        return whole(serving.ps())

    @router.get("/api/version", response_model=VersionResponse)
    async def api_version() -> Response:
        return whole(OllamaServing.version())

    async def managed(request: Request, serving: Serving) -> JSONResponse:
        raise model_managed(request, serving.state.config.model_name)

    for path, methods in (
        ("/api/pull", ["POST"]),
        ("/api/push", ["POST"]),
        ("/api/create", ["POST"]),
        ("/api/copy", ["POST"]),
        ("/api/delete", ["DELETE"]),
        ("/api/blobs/{digest}", ["HEAD", "POST"]),
    ):
        router.add_api_route(path, managed, methods=methods, include_in_schema=False)

    return router
