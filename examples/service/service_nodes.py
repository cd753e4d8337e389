"""Nodes of the service example. ``send_welcome`` fails while the file named by
``$MAIL_API_DOWN`` exists (a stand-in for an outage you can switch off)."""

from __future__ import annotations

import os
from typing import Any

from blokrun import Context

CREATED: list[str] = []


async def create_account(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    CREATED.append(ctx.request.id)
    return {"id": f"acct-{ctx.request.id}", "email": inputs["email"]}


async def send_welcome(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    flag = os.environ.get("MAIL_API_DOWN")
    if flag and os.path.exists(flag):
        raise ConnectionError("mail API is down")
    return {"sent": inputs["account"]["email"]}
