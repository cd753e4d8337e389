"""Nodes of the quickstart workflow.

Each node appends a line to ``$QUICKSTART_LEDGER`` (when set) so you can see that a resume
never runs a completed step again. ``charge_payment`` fails while ``$PAYMENT_PROVIDER_DOWN``
is set, like a real provider outage.
"""

from __future__ import annotations

import os
from typing import Any

from blokrun import Context


def _ledger(ctx: Context, what: str) -> None:
    ctx.logger.info("%s", what)
    path = os.environ.get("QUICKSTART_LEDGER")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{ctx.request.id} {ctx.step}\n")


async def validate_order(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    order = inputs["order"]
    if not order.get("items"):
        raise ValueError("an order needs at least one item")
    total = round(sum(i["qty"] * i["price"] for i in order["items"]), 2)
    _ledger(ctx, f"order {order['id']} is valid, total {total}")
    return {"total": total, "lines": len(order["items"])}


async def reserve_stock(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    _ledger(ctx, f"reserved {len(inputs['items'])} lines as {inputs['reservation']}")
    return {"reservation": inputs["reservation"], "skus": [i["sku"] for i in inputs["items"]]}


def charge_payment(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    # A plain function: blokrun runs it in a worker thread.
    if os.environ.get("PAYMENT_PROVIDER_DOWN"):
        raise ConnectionError("payment provider unreachable (PAYMENT_PROVIDER_DOWN is set)")
    _ledger(ctx, f"charged {inputs['amount']}")
    return {
        "charge_id": "ch_" + inputs["idempotency_key"].replace(":", "_"),
        "amount": inputs["amount"],
    }


async def send_receipt(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    _ledger(ctx, f"receipt to {inputs['to']}: {inputs['subject']}")
    return {"sent_to": inputs["to"], "subject": inputs["subject"]}
