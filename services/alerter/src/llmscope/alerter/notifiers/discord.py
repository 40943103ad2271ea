"""Discord incoming webhooks: ``content`` (the title) and one embed per alert.

Discord's limits are enforced here, not left to a 400: content 2,000 characters, 10 embeds, an
embed's title 256, description 4,096, 25 fields of 1,024, and 6,000 characters over all
embeds. ``allowed_mentions`` is empty so a model or error text reading ``@everyone`` pings no
one. Discord answers 204 No Content.
"""

from __future__ import annotations

from typing import Any

from llmscope.alerter import messages as m
from llmscope.alerter.notifiers.base import Notification
from llmscope.alerter.notifiers.chat import JsonWebhookNotifier, cascade_line, shown, split_facts

EMBED_TOTAL = 6000


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def embeds(n: Notification) -> list[dict[str, Any]]:
    alerts, more = shown(n)
    out: list[dict[str, Any]] = []
    total = 0
    for i, (a, resolved) in enumerate(alerts):
        tone = "resolved" if resolved else m.tone([a.event])
        facts, links = split_facts(n, a)
        what = dict(facts).get("What", m.one_line(a.event))
        pairs = [(_cut(k, 256), _cut(v, 1024)) for k, v in facts if k != "What"][:24]
        if links:
            pairs.append(("Links", _cut(" | ".join(f"[{t}]({u})" for t, u in links), 1024)))
        fields = [{"name": k, "value": v, "inline": False} for k, v in pairs]
        embed: dict[str, Any] = {
            "title": _cut(
                ("Resolved: " if resolved else "Firing: ") + f"{a.event.provider}/{a.event.model}", 256
            ),
            "description": _cut(what, 4096),
            "color": int(m.colour(tone).lstrip("#"), 16),
            "fields": fields,
            "timestamp": (a.cleared.ts if resolved and a.cleared else a.began).isoformat(),
        }
        if links:
            embed["url"] = links[0][1]
        if i == len(alerts) - 1 and more:
            embed["footer"] = {"text": f"and {more} more"}
        size = len(embed["title"]) + len(embed["description"]) + sum(len(k) + len(v) for k, v in pairs)
        if total + size > EMBED_TOTAL:
            break
        total += size
        out.append(embed)
    return out


class DiscordNotifier(JsonWebhookNotifier):
    """Posts to a Discord webhook URL (a secret: it is the credential)."""

    kind = "discord"
    what = "Discord webhook"

    def build_payload(self, notification: Notification) -> dict[str, Any]:
        n = notification
        content = n.title
        if (line := cascade_line(n)) is not None:
            content += f"\n{line}"
            if (url := n.incident_url()) is not None:
                content += f"\n<{url}>"  # <...>: a link without Discord's preview card
        return {
            "username": "LLMscope",
            "content": _cut(content, 2000),
            "embeds": embeds(n),
            "allowed_mentions": {"parse": []},
        }
