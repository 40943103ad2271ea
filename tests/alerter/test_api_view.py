"""The alerter's view of the API's settings bucket: one malformed key is skipped alone."""

from __future__ import annotations

import uuid

from nats.aio.client import Client as NATS

from llmscope.alerter.api_view import ApiView
from llmscope.bus.kv import open_bucket
from llmscope.proto import subjects


async def test_a_malformed_key_in_the_settings_bucket_hides_no_other_setting(nc: NATS) -> None:
    js = nc.jetstream()
    bucket = f"t_settings_{uuid.uuid4().hex[:10]}"
    kv = await open_bucket(js, bucket, description="test")
    try:
        # Listed (sorted) before the good ones, and written first.
        await kv.put("a.b", b'"two tokens: no setting key"')
        await kv.put(subjects.kv_key("alert.email.to"), b'["ops@example.com"]')
        await kv.put(subjects.kv_key("alert.slack.webhook_url"), b'"https://hooks.example.com/x"')
        view = ApiView(nc, bucket=bucket)
        assert await view.settings() == {
            "alert.email.to": '["ops@example.com"]',
            "alert.slack.webhook_url": '"https://hooks.example.com/x"',
        }
    finally:
        await js.delete_key_value(bucket)
