"""Probe targets: from a TOML or YAML file, from LLMSCOPE_TARGETS, or the simulator by default.

File format (TOML shown; YAML has the same keys)::

    [defaults]              # optional; each key also settable per target
    interval_s = 2.0        # seconds between probes of one target
    jitter = 0.1            # +-10 % random spread of the interval
    timeout_s = 30.0        # a probe taking longer is a ``timeout``
    streaming = true        # streaming calls measure time to first token
    concurrency = 1         # probes of one target in flight at once (1: one after the other)
    cold_start = "exclude"  # exclude | include: cold-start probes kept out of warm charts or not
    cold_start_ms = 500.0   # a load duration above this is a cold start (Ollama reports it)

    [[prompts]]             # optional; replaces the default simple/medium/complex set
    id = "haiku"
    class = "simple"
    text = "Write a haiku about latency."
    max_tokens = 40

    [[targets]]
    kind = "openai"                          # ollama | openai | anthropic
    model = "gpt-4o-mini"
    base_url = "https://api.openai.com/v1"   # default per kind, see DEFAULT_BASE_URLS
    api_key_env = "OPENAI_API_KEY"           # the variable holding the key (never the key)
    name = "openai-mini"                     # default "<kind>/<model>"
    host = "openai"                          # host label; models sharing one degrade together
    prompts = ["haiku"]                      # a subset of prompt ids (default: all)
    api = "chat"                             # Ollama only: generate (default) or chat

LLMSCOPE_TARGETS holds targets as ``KIND,BASE_URL,MODEL[,key=value...]`` entries separated by
``;``, with the keys above (``name``, ``api_key_env``, ``interval_s``, ``jitter``, ``timeout_s``,
``streaming``, ``host``, ``api``, ``concurrency``, ``cold_start``, ``cold_start_ms``), e.g.
``ollama,http://127.0.0.1:11434,llama3.1:8b;openai,https://api.openai.com/v1,gpt-4o-mini,api_key_env=OPENAI_API_KEY``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
import yaml
from msgspec import Meta

from llmscope.config.env import ConfigError, Env, Secret
from llmscope.prober.prompts import DEFAULT_PROMPTS, Prompt
from llmscope.proto.telemetry import ProbeKind
from llmscope.simulator.models import DEFAULT_MODELS, SimModel

OllamaApi = Literal["generate", "chat"]
ColdStartPolicy = Literal["exclude", "include"]
KINDS: tuple[ProbeKind, ...] = ("ollama", "openai", "anthropic")
DEFAULT_BASE_URLS: dict[str, str] = {
    "ollama": "http://127.0.0.1:11434",
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
}


@dataclass(frozen=True, slots=True)
class Target:
    """One endpoint and model to probe, and how."""

    name: str
    kind: ProbeKind
    base_url: str
    model: str
    prompts: tuple[Prompt, ...]
    api_key: Secret = field(default_factory=lambda: Secret(""))
    api_key_env: str | None = None
    interval_s: float = 2.0
    jitter: float = 0.1
    timeout_s: float = 30.0
    streaming: bool = True
    host: str = ""
    api: OllamaApi = "generate"
    concurrency: int = 1
    """Probes of this target in flight at once; 1 (default) so the prober never queues behind
    its own probes on a server with one slot."""
    cold_start: ColdStartPolicy = "exclude"
    cold_start_ms: float = 500.0


@dataclass(frozen=True, slots=True)
class TargetDefaults:
    interval_s: float = 2.0
    jitter: float = 0.1
    timeout_s: float = 30.0
    streaming: bool = True
    concurrency: int = 1
    cold_start: ColdStartPolicy = "exclude"
    cold_start_ms: float = 500.0


# ---- file schema: config structs forbid unknown keys so typos fail loudly.

PositiveSeconds = Annotated[float, Meta(gt=0, le=86400)]
Jitter = Annotated[float, Meta(ge=0, lt=1)]
Name = Annotated[str, Meta(min_length=1, max_length=256)]
Concurrency = Annotated[int, Meta(ge=1, le=64)]
ColdStartMs = Annotated[float, Meta(ge=0, le=3_600_000)]


class _PromptConfig(msgspec.Struct, forbid_unknown_fields=True, rename={"prompt_class": "class"}):
    id: Name
    text: Annotated[str, Meta(min_length=1)]
    max_tokens: Annotated[int, Meta(ge=1, le=100_000)]
    prompt_class: Annotated[str, Meta(max_length=64)] = ""


class _TargetConfig(msgspec.Struct, forbid_unknown_fields=True):
    kind: ProbeKind
    model: Name
    base_url: str | None = None
    name: Name | None = None
    api_key_env: Name | None = None
    interval_s: PositiveSeconds | None = None
    jitter: Jitter | None = None
    timeout_s: PositiveSeconds | None = None
    streaming: bool | None = None
    host: Annotated[str, Meta(max_length=256)] | None = None
    prompts: list[str] | None = None
    api: OllamaApi | None = None
    concurrency: Concurrency | None = None
    cold_start: ColdStartPolicy | None = None
    cold_start_ms: ColdStartMs | None = None


class _DefaultsConfig(msgspec.Struct, forbid_unknown_fields=True):
    interval_s: PositiveSeconds | None = None
    jitter: Jitter | None = None
    timeout_s: PositiveSeconds | None = None
    streaming: bool | None = None
    concurrency: Concurrency | None = None
    cold_start: ColdStartPolicy | None = None
    cold_start_ms: ColdStartMs | None = None


class _FileConfig(msgspec.Struct, forbid_unknown_fields=True):
    targets: list[_TargetConfig] = msgspec.field(default_factory=list)
    prompts: list[_PromptConfig] | None = None
    defaults: _DefaultsConfig = msgspec.field(default_factory=_DefaultsConfig)


def _check_url(url: str, where: str) -> str:
    parsed = urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"{where}: base_url {url!r} must be an http:// or https:// URL")
    return url.rstrip("/")


def _build(
    raw: _TargetConfig,
    *,
    defaults: TargetDefaults,
    prompts: Sequence[Prompt],
    env: Env,
    where: str,
) -> Target:
    by_id = {p.id: p for p in prompts}
    if raw.prompts is None:
        chosen = tuple(prompts)
    else:
        unknown = [p for p in raw.prompts if p not in by_id]
        if unknown or not raw.prompts:
            raise ConfigError(f"{where}: prompts {unknown or '[]'} are not among {sorted(by_id)}")
        chosen = tuple(by_id[p] for p in raw.prompts)
    api_key = Secret("")
    if raw.api_key_env is not None:
        api_key = env.secret(raw.api_key_env)
        if not api_key:
            raise ConfigError(f"{where}: api_key_env names {raw.api_key_env}, which is not set")
    if raw.api is not None and raw.kind != "ollama":
        raise ConfigError(f"{where}: 'api' applies to kind ollama only")
    return Target(
        name=raw.name or f"{raw.kind}/{raw.model}",
        kind=raw.kind,
        base_url=_check_url(raw.base_url or DEFAULT_BASE_URLS[raw.kind], where),
        model=raw.model,
        prompts=chosen,
        api_key=api_key,
        api_key_env=raw.api_key_env,
        interval_s=raw.interval_s if raw.interval_s is not None else defaults.interval_s,
        jitter=raw.jitter if raw.jitter is not None else defaults.jitter,
        timeout_s=raw.timeout_s if raw.timeout_s is not None else defaults.timeout_s,
        streaming=raw.streaming if raw.streaming is not None else defaults.streaming,
        host=raw.host or "",
        api=raw.api or "generate",
        concurrency=raw.concurrency if raw.concurrency is not None else defaults.concurrency,
        cold_start=raw.cold_start if raw.cold_start is not None else defaults.cold_start,
        cold_start_ms=raw.cold_start_ms if raw.cold_start_ms is not None else defaults.cold_start_ms,
    )


def _merge_defaults(base: TargetDefaults, raw: _DefaultsConfig) -> TargetDefaults:
    return TargetDefaults(
        interval_s=raw.interval_s if raw.interval_s is not None else base.interval_s,
        jitter=raw.jitter if raw.jitter is not None else base.jitter,
        timeout_s=raw.timeout_s if raw.timeout_s is not None else base.timeout_s,
        streaming=raw.streaming if raw.streaming is not None else base.streaming,
        concurrency=raw.concurrency if raw.concurrency is not None else base.concurrency,
        cold_start=raw.cold_start if raw.cold_start is not None else base.cold_start,
        cold_start_ms=raw.cold_start_ms if raw.cold_start_ms is not None else base.cold_start_ms,
    )


def _prompts_from(raw: list[_PromptConfig] | None, where: str) -> tuple[Prompt, ...]:
    if raw is None:
        return DEFAULT_PROMPTS
    if not raw:
        raise ConfigError(f"{where}: prompts is empty")
    ids = [p.id for p in raw]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{where}: prompt ids must be unique, got {ids}")
    return tuple(
        Prompt(id=p.id, prompt_class=p.prompt_class, text=p.text, max_tokens=p.max_tokens) for p in raw
    )


def load_file(
    path: Path, *, defaults: TargetDefaults, env: Env, variable: str = "LLMSCOPE_PROBER_CONFIG"
) -> tuple[list[Target], tuple[Prompt, ...]]:
    """Targets and prompts of a ``.toml``, ``.yaml`` or ``.yml`` file."""
    where = f"{variable}={path}"
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the file ({exc.strerror})") from None
    data: Any
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"{where}: the file must end in .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{where}: not valid {path.suffix[1:].upper()}: {exc}") from None
    try:
        config = msgspec.convert(data, _FileConfig)
    except msgspec.ValidationError as exc:
        # msgspec names the field, e.g. "Expected `str`, got `int` - at `$.targets[0].model`".
        raise ConfigError(f"{where}: {exc}") from None
    prompts = _prompts_from(config.prompts, f"{where} prompts")
    merged = _merge_defaults(defaults, config.defaults)
    targets = [
        _build(raw, defaults=merged, prompts=prompts, env=env, where=f"{where} targets[{i}]")
        for i, raw in enumerate(config.targets)
    ]
    return targets, prompts


_BOOL = {
    "true": True,
    "1": True,
    "yes": True,
    "on": True,
    "false": False,
    "0": False,
    "no": False,
    "off": False,
}


def parse_targets_spec(
    spec: str,
    *,
    defaults: TargetDefaults,
    prompts: Sequence[Prompt],
    env: Env,
    variable: str = "LLMSCOPE_TARGETS",
) -> list[Target]:
    """Targets of a compact ``KIND,BASE_URL,MODEL[,key=value...];...`` spec."""
    targets: list[Target] = []
    for i, entry in enumerate(e.strip() for e in spec.split(";")):
        if not entry:
            continue
        where = f"{variable} entry {i + 1} ({entry!r})"
        kind, *rest = [part.strip() for part in entry.split(",")]
        if len(rest) < 2:
            raise ConfigError(f"{where}: expected KIND,BASE_URL,MODEL[,key=value...]")
        base_url, model, *options = rest
        fields: dict[str, Any] = {"kind": kind, "base_url": base_url, "model": model}
        for option in options:
            key, eq, value = option.partition("=")
            if not eq:
                raise ConfigError(f"{where}: option {option!r} is not key=value")
            key = key.strip()
            if key == "streaming":
                if value.lower() not in _BOOL:
                    raise ConfigError(f"{where}: streaming={value!r} is not true/false")
                fields[key] = _BOOL[value.lower()]
            elif key in ("interval_s", "jitter", "timeout_s", "cold_start_ms"):
                try:
                    fields[key] = float(value)
                except ValueError:
                    raise ConfigError(f"{where}: {key}={value!r} is not a number") from None
            elif key == "concurrency":
                try:
                    fields[key] = int(value)
                except ValueError:
                    raise ConfigError(f"{where}: {key}={value!r} is not a whole number") from None
            else:
                fields[key] = value
        try:
            raw = msgspec.convert(fields, _TargetConfig)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        targets.append(_build(raw, defaults=defaults, prompts=prompts, env=env, where=where))
    return targets


def simulator_targets(
    url: str,
    *,
    defaults: TargetDefaults,
    prompts: Sequence[Prompt],
    models: Sequence[SimModel] = DEFAULT_MODELS,
) -> list[Target]:
    """One target per default simulated model, each on the API of its flavour."""
    base = url.rstrip("/")
    return [
        Target(
            name=f"{m.flavour}/{m.name}",
            kind=m.flavour,
            base_url=f"{base}/v1" if m.flavour == "openai" else base,
            model=m.name,
            prompts=tuple(prompts),
            interval_s=defaults.interval_s,
            jitter=defaults.jitter,
            timeout_s=defaults.timeout_s,
            streaming=defaults.streaming,
            host=m.host,
            concurrency=defaults.concurrency,
            cold_start=defaults.cold_start,
            cold_start_ms=defaults.cold_start_ms,
        )
        for m in models
    ]


def check_unique(targets: Sequence[Target]) -> None:
    names = [t.name for t in targets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"target names must be unique; repeated: {', '.join(duplicates)} (set 'name')")
