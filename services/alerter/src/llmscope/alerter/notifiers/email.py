"""Email through SMTP (aiosmtplib): plain, STARTTLS or SSL; several recipients; text and HTML."""

from __future__ import annotations

import html
import re
import ssl
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Literal

import aiosmtplib

from llmscope.alerter.destinations import Destinations
from llmscope.alerter.notifiers.base import AlertView, Notification, describe, fmt_value, metric_unit
from llmscope.alerter.retry import DeliveryError
from llmscope.config.env import Secret

Security = Literal["none", "starttls", "ssl"]


@dataclass(frozen=True, slots=True)
class EmailConfig:
    host: str
    sender: str
    recipients: tuple[str, ...]
    port: int = 587
    security: Security = "starttls"
    username: str = ""
    password: Secret = field(default_factory=lambda: Secret(""))
    validate_certs: bool = True
    timeout: float = 10.0


def _check_address(addr: str) -> None:
    try:
        parsed = Address(addr_spec=addr.strip())
    except (ValueError, IndexError) as exc:
        raise DeliveryError(f"bad email address {addr!r}: {exc}", retryable=False) from None
    if not parsed.domain or not parsed.username:
        raise DeliveryError(f"bad email address {addr!r}", retryable=False)


def _stats_lines(a: AlertView) -> list[tuple[str, str]]:
    ev, lim = a.event, a.event.limits
    unit = metric_unit(ev.metric)
    rows = [
        ("Model", f"{ev.provider}/{ev.model}" + (f" on {ev.host}" if ev.host else "")),
        ("Rule", f"{ev.rule} {ev.rule_name}".strip() + f" ({ev.severity})"),
        ("Metric", f"{ev.metric} ({ev.chart} chart, {lim.transform} scale)"),
        ("Value", f"{fmt_value(ev.value, unit)} ({ev.deviation_sigma:+.2f} sigma)"),
        ("Center", fmt_value(lim.center, unit)),
        ("Sigma", f"{lim.sigma:.4g}" + (" (log units)" if lim.transform == "log" else f" {unit}")),
        ("UCL / LCL", f"{fmt_value(lim.ucl, unit)} / {fmt_value(lim.lcl, unit)}"),
        ("Zone A (2 sigma)", f"{fmt_value(lim.zone_a_lower, unit)} .. {fmt_value(lim.zone_a_upper, unit)}"),
        ("Zone B (1 sigma)", f"{fmt_value(lim.zone_b_lower, unit)} .. {fmt_value(lim.zone_b_upper, unit)}"),
        ("Baseline", f"{ev.baseline.id} (n={ev.baseline.n}, {ev.baseline.reason})"),
        ("Opened", format_datetime(ev.opened_at or ev.ts)),
    ]
    sysm = ev.system
    system = ", ".join(
        f"{k} {v:.0f}%"
        for k, v in (
            ("CPU", sysm.cpu_percent),
            ("memory", sysm.memory_percent),
            ("GPU", sysm.gpu_percent),
            ("GPU memory", sysm.gpu_memory_percent),
        )
        if v is not None
    )
    rows.append(("System", system or "not reported"))
    if a.cleared is not None:
        rows.append(("Cleared", format_datetime(a.cleared.ts)))
    if a.acknowledged_by:
        rows.append(("Acknowledged by", a.acknowledged_by))
    return rows


def render_text(n: Notification) -> str:
    out = [n.title, ""]
    sections = [("FIRING", n.firing), ("RESOLVED", n.resolved)]
    for heading, alerts in sections:
        if not alerts:
            continue
        out.append(f"== {heading} ({len(alerts)}) ==")
        for a in alerts:
            out.append(describe(a.event))
            out.extend(f"  {k:<17} {v}" for k, v in _stats_lines(a))
            unit = metric_unit(a.event.metric)
            points = a.context_points()
            if points:
                out.append("  Context (* = part of the pattern):")
                for p in points:
                    ts = p.ts.isoformat(timespec="seconds") if p.ts else "-"
                    mark = "*" if p.in_pattern else " "
                    out.append(f"   {mark} {ts:<25} {fmt_value(p.value, unit):>14}  {p.status}")
            out.append(f"  View details: {n.details_url(a.episode_id)}")
            out.append("")
    return "\n".join(out)


def render_html(n: Notification) -> str:
    e = html.escape
    parts = [f"<html><body style='font-family:sans-serif'><h2>{e(n.title)}</h2>"]
    for heading, alerts in (("Firing", n.firing), ("Resolved", n.resolved)):
        if not alerts:
            continue
        parts.append(f"<h3>{heading} ({len(alerts)})</h3>")
        for a in alerts:
            unit = metric_unit(a.event.metric)
            parts.append(f"<h4>{e(describe(a.event))}</h4><table border='1' cellpadding='4'>")
            parts.extend(f"<tr><th align='left'>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _stats_lines(a))
            parts.append("</table>")
            points = a.context_points()
            if points:
                parts.append(
                    "<p>Context</p><table border='1' cellpadding='3'>"
                    "<tr><th>time</th><th>value</th><th>status</th><th>pattern</th></tr>"
                )
                for p in points:
                    style = " style='background:#fdd'" if p.in_pattern else ""
                    ts = p.ts.isoformat(timespec="seconds") if p.ts else "-"
                    parts.append(
                        f"<tr{style}><td>{e(ts)}</td><td>{e(fmt_value(p.value, unit))}</td>"
                        f"<td>{e(p.status)}</td><td>{'yes' if p.in_pattern else ''}</td></tr>"
                    )
                parts.append("</table>")
            url = e(n.details_url(a.episode_id), quote=True)
            parts.append(f"<p><a href='{url}'>View details</a></p>")
    parts.append("</body></html>")
    return "".join(parts)


_NOT_ATEXT = re.compile(r"[^A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")


def message_id(notification_id: str) -> str:
    """``<{notification id}@llmscope>``, the id made an RFC 5322 dot-atom (``7:mail:1`` -> ``7.mail.1``)."""
    left = ".".join(part for part in _NOT_ATEXT.split(notification_id) if part) or "notification"
    return f"<{left}@llmscope>"


class EmailNotifier:
    """Sends one multipart message to every recipient."""

    kind = "email"

    def __init__(
        self,
        name: str,
        config: EmailConfig,
        *,
        send_resolved: bool = True,
        destinations: Destinations | None = None,
    ) -> None:
        self.name = name
        self._destinations = destinations
        self.config = config
        self.send_resolved = send_resolved

    def build_payload(self, notification: Notification) -> EmailMessage:
        cfg = self.config
        if not cfg.recipients:
            raise DeliveryError("no recipients configured", retryable=False)
        for addr in (cfg.sender, *cfg.recipients):
            _check_address(addr)
        msg = EmailMessage()
        msg["Subject"] = notification.title
        msg["From"] = cfg.sender
        msg["To"] = ", ".join(cfg.recipients)
        msg["Date"] = format_datetime(notification.created_at)
        # Stable across re-sends (a take-over after a crash), so receivers can de-duplicate by it.
        msg["Message-ID"] = message_id(notification.id)
        msg["X-LLMscope-Notification"] = notification.id
        try:
            msg.set_content(render_text(notification))
            msg.add_alternative(render_html(notification), subtype="html")
        except (ValueError, TypeError, KeyError) as exc:
            raise DeliveryError(f"template error: {exc!r}", retryable=False) from exc
        return msg

    async def send(self, payload: EmailMessage) -> str:
        cfg = self.config
        if self._destinations is not None:
            await self._destinations.check(cfg.host, cfg.port)
        context = ssl.create_default_context()
        if not cfg.validate_certs:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        try:
            errors, answer = await aiosmtplib.send(
                payload,
                hostname=cfg.host,
                port=cfg.port,
                username=cfg.username or None,
                password=cfg.password.get() or None,
                use_tls=cfg.security == "ssl",
                start_tls=cfg.security == "starttls",
                tls_context=context,
                timeout=cfg.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise DeliveryError(f"recipients refused: {exc}", retryable=False) from exc
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(f"SMTP authentication failed: {exc.code}", retryable=False) from exc
        except aiosmtplib.SMTPResponseException as exc:
            # 4yz is transient by definition in SMTP; 5yz is permanent.
            raise DeliveryError(f"SMTP {exc.code}: {exc.message}", retryable=exc.code < 500) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise DeliveryError(f"SMTP transport error: {exc!r}", retryable=True) from exc
        refused = f"; refused: {', '.join(sorted(errors))}" if errors else ""
        return f"SMTP accepted: {answer.strip()[:200]}{refused}"
