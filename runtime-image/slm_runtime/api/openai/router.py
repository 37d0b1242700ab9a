"""The OpenAI routes: each binds a method of :class:`OpenAIServing` to HTTP (the body it takes,
the client's disconnect, the stream's framing). A route's ``response_model`` documents its answer
in the OpenAPI document; the answer is serialised by the serving method's model, not again."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response as HTTPResponse

from slm_runtime.api.auth import bearer_auth
from slm_runtime.api.openai.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    Model,
    ModelList,
)
from slm_runtime.api.openai.responses_protocol import STATELESS, Response, ResponseRequest
from slm_runtime.api.openai.serving import OpenAIServing
from slm_runtime.api.reply import framed, named_sse, sse, whole
from slm_runtime.errors import APIError, model_managed
from slm_runtime.state import disconnection


async def _serving(request: Request) -> OpenAIServing:
    serving: OpenAIServing = request.app.state.openai
    return serving


Serving = Annotated[OpenAIServing, Depends(_serving)]


def build_router(api_token: str | None) -> APIRouter:
    """The OpenAI routes, behind the API token when one is set."""
    router = APIRouter(prefix="/v1", dependencies=[Depends(bearer_auth(api_token))])

    @router.post("/chat/completions", response_model=ChatCompletion)
    async def chat_completions(
        body: ChatCompletionRequest, request: Request, serving: Serving
    ) -> HTTPResponse:
        answer = await serving.chat(body, disconnection(request))
        return framed(answer, sse)

    @router.post("/completions", response_model=Completion)
    async def completions(
        body: CompletionRequest, request: Request, serving: Serving
    ) -> HTTPResponse:
        answer = await serving.completion(body, disconnection(request))
        return framed(answer, sse)

    @router.post("/embeddings", response_model=EmbeddingList)
    async def embeddings(body: EmbeddingRequest, serving: Serving) -> HTTPResponse:
        return whole(await serving.embeddings(body))

    @router.get("/models", response_model=ModelList)
    async def models(serving: Serving) -> HTTPResponse:
        return whole(serving.models())

    @router.get("/models/{model_id:path}", response_model=Model)
    async def model(model_id: str, serving: Serving) -> HTTPResponse:
        return whole(serving.model(model_id))

    @router.delete("/models/{model_id:path}", include_in_schema=False)
    async def delete_model(model_id: str, request: Request, serving: Serving) -> Any:
        raise model_managed(request, serving.state.config.model_name)

    @router.post("/responses", response_model=Response)
    async def create_response(
        body: ResponseRequest, request: Request, serving: Serving
    ) -> HTTPResponse:
        answer = await serving.respond(body, disconnection(request))
        return framed(answer, named_sse)

    @router.get("/responses/{response_id}")
    @router.delete("/responses/{response_id}")
    @router.post("/responses/{response_id}/cancel")
    @router.get("/responses/{response_id}/input_items")
    async def stored(response_id: str) -> Any:
        raise APIError(404, f"response {response_id!r} not found: {STATELESS}")

    return router
