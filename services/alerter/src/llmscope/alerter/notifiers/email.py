"""Email through SMTP (aiosmtplib): plain, STARTTLS or SSL; several recipients; text and HTML."""

from __future__ import annotations

import asyncio
import email.generator
import email.policy
import functools
import html
import io
import re
import socket
import ssl
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Literal

import aiosmtplib
from aiohttp.abc import ResolveResult

from llmscope.alerter import messages as m
from llmscope.alerter.destinations import Destinations
from llmscope.alerter.notifiers.base import AlertView, Notification
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
    ca_file: str = ""
    """PEM file of the CA (or the self-signed certificate) to trust instead of the system's"""
    timeout: float = 10.0


def tls_context(cfg: EmailConfig) -> ssl.SSLContext:
    """The client context for STARTTLS or SSL: the system's CAs, or ``ca_file``'s, or none at all
    when certificates are not verified (a private relay with a self-signed certificate)."""
    try:
        context = ssl.create_default_context(cafile=cfg.ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise DeliveryError(f"SMTP CA file {cfg.ca_file!r}: {exc}", retryable=False) from None
    if not cfg.validate_certs:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _check_address(addr: str) -> None:
    try:
        parsed = Address(addr_spec=addr.strip())
    except (ValueError, IndexError) as exc:
        raise DeliveryError(f"bad email address {addr!r}: {exc}", retryable=False) from None
    if not parsed.domain or not parsed.username:
        raise DeliveryError(f"bad email address {addr!r}", retryable=False)


def _stats_lines(a: AlertView) -> list[tuple[str, str]]:
    """The chart's figures, after the facts, in the metric's units (no sigma in log units)."""
    ev, lim = a.event, a.event.limits
    if m.is_outage(ev):
        rows = [("Baseline failure rate", m.baseline_failure_rate(ev))]
    else:
        q = functools.partial(m.quantity, metric=ev.metric)
        rows = [
            ("Baseline", f"{q(lim.center)} ({ev.baseline.n} probes, {ev.baseline.reason})"),
            ("Control limits", f"{q(lim.lcl)} .. {q(lim.ucl)}"),
            ("Signalling value", q(ev.value)),
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
    rows.append(("Host load", system or "not reported"))
    return rows


def _intro(n: Notification) -> list[str]:
    """A cascade's message names every model and the incident before any detail; a merged
    incident's closing message says which incident carries on."""
    if (merged := n.merge_line()) is not None:
        return [merged]
    if not n.cascade or n.incident is None:
        return []
    inc = n.incident
    where = f" on host {inc.host}" if inc.host else ""
    lines = [f"Cascade{where}: {len(inc.models)} models degraded together: {', '.join(inc.models)}."]
    url = n.incident_url()
    if url:
        lines.append(f"Incident: {url}")
    return lines


def render_text(n: Notification) -> str:
    out = [n.title, "", *_intro(n)]
    if out[-1]:
        out.append("")
    sections = [("FIRING", n.firing), ("RESOLVED", n.resolved)]
    for heading, alerts in sections:
        if not alerts:
            continue
        out.append(f"== {heading} ({len(alerts)}) ==")
        for a in alerts:
            out.extend(f"{k + ':':<15} {v}" for k, v in n.facts(a))
            if a.episode_id in n.told_before and a.cleared is None:
                out.append("")
                continue  # its figures went out in the message it refers to
            out.append("  Chart figures:")
            out.extend(f"    {k + ':':<22} {v}" for k, v in _stats_lines(a))
            points = a.context_points()
            if points and not m.is_outage(a.event):
                out.append("  Probes around it (* = part of the pattern):")
                for p in points:
                    ts = p.ts.isoformat(timespec="seconds") if p.ts else "-"
                    mark = "*" if p.in_pattern else " "
                    value = m.quantity(p.value, a.event.metric)
                    out.append(f"   {mark} {ts:<25} {value:>12}  {p.note(a.event)}".rstrip())
            out.append("")
    return "\n".join(out)


def _link(url: str) -> str:
    u = html.escape(url, quote=True)
    return f"<a href='{u}'>{html.escape(url)}</a>"


def render_html(n: Notification) -> str:
    e = html.escape
    colour = m.colour(n.tone)
    parts = [
        "<html><body style='font-family:sans-serif'>",
        f"<h2 style='color:{colour};border-left:6px solid {colour};padding-left:8px'>{e(n.title)}</h2>",
    ]
    intro = _intro(n)
    if intro:
        parts.append(f"<p><strong>{e(intro[0])}</strong>")
        url = n.merged_url() or n.incident_url()
        if url:
            parts.append(f"<br>Incident: {_link(url)}")
        parts.append("</p>")
    for heading, alerts in (("Firing", n.firing), ("Resolved", n.resolved)):
        if not alerts:
            continue
        parts.append(f"<h3>{heading} ({len(alerts)})</h3>")
        for a in alerts:
            tint = m.RESOLVED_COLOUR if a.cleared is not None else m.colour(m.tone([a.event]))
            parts.append(f"<table cellpadding='4' style='border-left:6px solid {tint}'>")
            for k, v in n.facts(a):
                cell = _link(v) if v.startswith(("http://", "https://")) else e(v)
                parts.append(f"<tr><th align='left' valign='top'>{e(k)}</th><td>{cell}</td></tr>")
            if a.episode_id in n.told_before and a.cleared is None:
                parts.append("</table>")
                continue  # its figures went out in the message it refers to
            parts.append("</table><p><small>Chart figures</small></p><table border='1' cellpadding='3'>")
            parts.extend(f"<tr><th align='left'>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _stats_lines(a))
            parts.append("</table>")
            points = a.context_points()
            if points and not m.is_outage(a.event):
                parts.append(
                    "<p><small>Probes around it</small></p><table border='1' cellpadding='3'>"
                    "<tr><th>time</th><th>value</th><th>against the limits</th><th>pattern</th></tr>"
                )
                for p in points:
                    style = " style='background:#fdd'" if p.in_pattern else ""
                    ts = p.ts.isoformat(timespec="seconds") if p.ts else "-"
                    parts.append(
                        f"<tr{style}><td>{e(ts)}</td><td>{e(m.quantity(p.value, a.event.metric))}</td>"
                        f"<td>{e(p.note(a.event))}</td><td>{'yes' if p.in_pattern else ''}</td></tr>"
                    )
                parts.append("</table>")
            url = e(n.details_url(a.episode_id), quote=True)
            parts.append(f"<p><a href='{url}'>View details</a></p>")
    parts.append("</body></html>")
    return "".join(parts)


_NOT_ATEXT = re.compile(r"[^A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")


# Headers are written on one line up to RFC 5322's 998 characters: folded at 78, a subject whose
# first word is long left "Subject:" alone on its line, and some clients showed it empty.
WIRE_POLICY = email.policy.SMTP.clone(max_line_length=998)
SUBJECT_MAX = 250
_THREAD = re.compile(r"^(?P<group>[^:]+):(?P<channel>.+):(?P<seq>[0-9]+)$")


def thread_root(notification_id: str) -> str | None:
    """The Message-ID of the group's first message on this channel, for ``In-Reply-To`` and
    ``References`` of its follow-ups (updates, reminders, resolution); None for the first."""
    match = _THREAD.match(notification_id)
    if match is None or int(match["seq"]) <= 1:
        return None
    return message_id(f"{match['group']}:{match['channel']}:1")


def thread_refs(n: Notification) -> list[str]:
    """``References`` of a message, oldest first (its last is ``In-Reply-To``): the warning a
    folded group sent first, then this group's first message when this one follows it."""
    refs = [message_id(n.follows)] if n.follows else []
    root = thread_root(n.id)
    if root is not None:
        refs.append(root)
    return refs


def flatten(msg: EmailMessage) -> bytes:
    out = io.BytesIO()
    email.generator.BytesGenerator(out, policy=WIRE_POLICY).flatten(msg)
    return out.getvalue()


_NO_SUCH_HOST = frozenset({socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)})


def permanent_smtp_error(exc: BaseException) -> str | None:
    """The reason when an SMTP failure is a configuration error that retrying cannot fix."""
    text = str(exc)
    cause = exc.__cause__ or exc.__context__
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    if "STARTTLS extension not supported" in text:
        return "the server does not offer STARTTLS: choose security 'none' (plain) or 'ssl'"
    if any(
        isinstance(e, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(e)
        for e in chain[1:]
    ) or ("CERTIFICATE_VERIFY_FAILED" in text):
        return (
            f"the server's TLS certificate was refused ({text[:160]}): give its CA file"
            " (alert.email.ca_file) or turn verification off (alert.email.verify_cert)"
        )
    if isinstance(cause, ssl.SSLError) or "WRONG_VERSION_NUMBER" in text:
        return f"TLS handshake failed ({text[:160]}): check the security mode and port"
    if isinstance(cause, socket.gaierror) and cause.errno in _NO_SUCH_HOST:
        return f"unknown SMTP host: {text[:160]}"
    return None


def message_id(notification_id: str) -> str:
    """``<{notification id}@llmscope>``, the id made an RFC 5322 dot-atom (``7:mail:1`` -> ``7.mail.1``)."""
    left = ".".join(part for part in _NOT_ATEXT.split(notification_id) if part) or "notification"
    return f"<{left}@llmscope>"


async def _connect(found: list[ResolveResult], port: int, limit_s: float) -> socket.socket:
    """A connected socket to the first of the checked addresses that answers."""
    loop = asyncio.get_running_loop()
    last: OSError | None = None
    for result in found:
        sock = socket.socket(result["family"], socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (result["host"], port)), limit_s)
        except OSError as exc:  # TimeoutError included
            sock.close()
            last = exc
            continue
        return sock
    raise last or OSError(f"no address to connect to for port {port}")


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
        title = notification.title
        msg["Subject"] = title if len(title) <= SUBJECT_MAX else title[: SUBJECT_MAX - 3] + "..."
        msg["From"] = cfg.sender
        msg["To"] = ", ".join(cfg.recipients)
        msg["Date"] = format_datetime(notification.created_at)
        # Stable across re-sends (a take-over after a crash), so receivers can de-duplicate by it.
        msg["Message-ID"] = message_id(notification.id)
        msg["X-LLMscope-Notification"] = notification.id
        refs = thread_refs(notification)
        if refs:
            # Updates and the resolution thread under the first message in mail clients, and
            # one degradation's critical under the warning already sent about it.
            msg["In-Reply-To"] = refs[-1]
            msg["References"] = " ".join(refs)
        try:
            msg.set_content(render_text(notification))
            msg.add_alternative(render_html(notification), subtype="html")
        except (ValueError, TypeError, KeyError) as exc:
            raise DeliveryError(f"template error: {exc!r}", retryable=False) from exc
        return msg

    async def send(self, payload: EmailMessage) -> str:
        cfg = self.config
        found = None
        if self._destinations is not None:
            # Resolved and checked once; the connection goes to that address (no second lookup
            # for a rebinding name to answer differently), the host name still names the server
            # for TLS.
            found = await self._destinations.addresses(cfg.host, cfg.port)
        # Loading the trust store reads files: off the event loop.
        context = await asyncio.to_thread(tls_context, cfg)
        try:
            sock = await _connect(found, cfg.port, cfg.timeout) if found else None
            client = aiosmtplib.SMTP(
                hostname=cfg.host,
                port=None if sock else cfg.port,
                sock=sock,
                use_tls=cfg.security == "ssl",
                start_tls=cfg.security == "starttls",
                tls_context=context,
                timeout=cfg.timeout,
            )
            # Logged in within the session, not on connect (as aiosmtplib.send does): a refused
            # login then ends with QUIT, as the session's other answers do, where a login on
            # connect dropped the connection without a word.
            async with client:
                if cfg.username:
                    await client.login(cfg.username, cfg.password.get())
                errors, answer = await client.sendmail(cfg.sender, list(cfg.recipients), flatten(payload))
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise DeliveryError(f"recipients refused: {exc}", retryable=False) from exc
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(f"SMTP authentication failed: {exc.code}", retryable=False) from exc
        except aiosmtplib.SMTPResponseException as exc:
            # 4yz is transient by definition in SMTP; 5yz is permanent.
            raise DeliveryError(f"SMTP {exc.code}: {exc.message}", retryable=exc.code < 500) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            reason = permanent_smtp_error(exc)
            if reason is not None:
                raise DeliveryError(reason, retryable=False) from exc
            raise DeliveryError(f"SMTP transport error: {exc!r}", retryable=True) from exc
        refused = f"; refused: {', '.join(sorted(errors))}" if errors else ""
        return f"SMTP accepted: {answer.strip()[:200]}{refused}"
