"""The serving routes of the API: deployments (``dcsched serve ...``).

``POST /v1/deployments`` ``{"spec": kind: serve document}`` creates one; ``GET`` lists
them, ``GET /v1/deployments/NAME`` shows one (URL, replicas with node, state, balancer
state and request rates); ``POST .../NAME/stop``, ``.../NAME/update`` ``{"model":
"NAME:VERSION"}``, ``.../NAME/scale`` ``{"replicas": N}`` change one. Authentication,
roles (a member changes its own team's deployments) and the audit log are the app's
(``dcsched.adapters.http_api``, ``dcsched.core.auth``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from dcsched.client import ApiError
from dcsched.core.spec import SpecError
from dcsched.serving.controller import DeploymentError, ServeController


class CreateRequest(BaseModel):
    spec: Any = Field(description="A kind: serve spec (a mapping).")


class UpdateRequest(BaseModel):
    model: str = Field(max_length=80, description="NAME or NAME:VERSION of a registered model.")


class ScaleRequest(BaseModel):
    replicas: int = Field(ge=0, le=64)


def add_serve_routes(app: FastAPI, controller: ServeController) -> None:
    def call(action: Any) -> dict[str, Any]:
        try:
            result: dict[str, Any] = action()
        except SpecError as exc:
            raise ApiError(400, "invalid serve spec", exc.problems) from None
        except DeploymentError as exc:
            raise ApiError(exc.status, exc.message, exc.problems) from None
        return result

    @app.post("/v1/deployments", status_code=201)
    def create(request: CreateRequest) -> dict[str, Any]:
        return call(lambda: controller.view(controller.create(request.spec).name))

    @app.get("/v1/deployments")
    def listing() -> dict[str, Any]:
        return {"deployments": [controller.view(name) for name in controller.names()]}

    @app.get("/v1/deployments/{name}")
    def show(name: str) -> dict[str, Any]:
        return call(lambda: controller.view(name))

    @app.post("/v1/deployments/{name}/stop")
    def stop(name: str) -> dict[str, Any]:
        return call(lambda: controller.view(controller.stop(name).name))

    @app.post("/v1/deployments/{name}/update")
    def update(name: str, request: UpdateRequest) -> dict[str, Any]:
        return call(lambda: controller.view(controller.update(name, request.model).name))

    @app.post("/v1/deployments/{name}/scale")
    def scale(name: str, request: ScaleRequest) -> dict[str, Any]:
        return call(lambda: controller.view(controller.scale(name, request.replicas).name))
