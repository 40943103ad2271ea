"""The settings people change on the dashboard: read with their defaults, checked (one by one and
together), stored, and mirrored to the alerter."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from llmscope.api import known_settings, ticket_settings
from llmscope.api.store_base import StoreBase
from llmscope.config.outbound import DestinationRefused
from llmscope.web.data import SettingError, SettingErrors, SettingInfo


class SettingsStore(StoreBase):
    """The settings table, written whole or not at all."""

    async def settings(self) -> list[SettingInfo]:
        rows = {r["key"]: r for r in await self.pool.fetch("SELECT * FROM settings")}
        out = []
        for spec in known_settings.SPECS:
            row = rows.get(spec.key)
            value = spec.default if row is None else row["value"]
            out.append(
                SettingInfo(
                    key=spec.key,
                    kind=spec.kind,
                    description=spec.description,
                    secret=spec.secret,
                    is_set=row is not None and value not in ("", None),
                    value=None if spec.secret else value,
                    default=None if spec.secret else spec.default,
                    choices=list(spec.choices),
                    updated_at=None if row is None else row["updated_at"],
                    updated_by=None if row is None else row["updated_by"],
                )
            )
        return out

    async def setting_value(self, key: str) -> object:
        """One setting's value (its default when unset; None for a secret), reading only its row:
        for pages polled every few seconds that need one setting, not all of them."""
        spec = known_settings.spec(key)
        if spec.secret:
            return None
        row = await self.pool.fetchrow("SELECT value FROM settings WHERE key = $1", key)
        return spec.default if row is None else row["value"]

    async def put_setting(self, key: str, value: object, by: str) -> SettingInfo:
        spec = known_settings.spec(key)
        clean = spec.validate(value)
        await self._check_destination(key, clean)
        for field, message in (await self._ticket_errors({key: clean})).items():
            raise ticket_settings.TicketConflict(field, message)
        await self.pool.execute(
            """INSERT INTO settings (key, value, updated_at, updated_by) VALUES ($1, $2, now(), $3)
               ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now(),
                   updated_by = EXCLUDED.updated_by""",
            key,
            clean,
            by,
        )
        await self.settings_mirror.sync()
        return next(s for s in await self.settings() if s.key == key)

    async def _check_destination(self, key: str, value: object) -> None:
        """A channel URL or SMTP host that reaches a non-public address is refused when saved
        (the alerter checks again at every send and connection: llmscope.config.outbound)."""
        if key not in known_settings.DESTINATIONS or not isinstance(value, str) or not value:
            return
        try:
            if known_settings.DESTINATIONS[key] == "url":
                await self.outbound.check_url(value)
            else:
                await self.outbound.check(value)
        except DestinationRefused as exc:
            raise SettingError(key, str(exc)) from None

    async def _ticket_errors(
        self, changes: Mapping[str, object], removed: Collection[str] = ()
    ) -> dict[str, str]:
        """The ticket settings as they would stand after ``changes`` (and ``removed`` gone),
        checked together."""
        if not any(k.startswith(ticket_settings.PREFIX) for k in (*changes, *removed)):
            return {}
        rows = await self.pool.fetch(
            "SELECT key, value FROM settings WHERE starts_with(key, $1)", ticket_settings.PREFIX
        )
        stored = {r["key"]: r["value"] for r in rows if r["key"] not in removed}
        return ticket_settings.ticket_errors({**stored, **changes})

    async def put_settings(
        self, values: dict[str, object], by: str, remove: Collection[str] = ()
    ) -> list[SettingInfo]:
        """Validate every value first, then store them and delete the stored ``remove`` keys
        (the environment's or the default value applies again) in one transaction: a form
        saves whole."""
        clean: dict[str, object] = {}
        errors: dict[str, str] = {}
        for key in remove:
            if key not in known_settings.BY_KEY:
                errors[key] = "unknown setting"
        for key, value in values.items():
            try:
                clean[key] = known_settings.spec(key).validate(value)
                await self._check_destination(key, clean[key])
            except SettingError as exc:
                errors[key] = exc.message
        if not errors:
            errors = await self._ticket_errors(clean, remove)
        if errors:
            raise SettingErrors(errors)
        async with self.pool.acquire() as conn, conn.transaction():
            if remove:
                await conn.execute("DELETE FROM settings WHERE key = ANY($1::text[])", list(remove))
            for key, value in clean.items():
                await conn.execute(
                    """INSERT INTO settings (key, value, updated_at, updated_by) VALUES ($1, $2, now(), $3)
                       ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now(),
                           updated_by = EXCLUDED.updated_by""",
                    key,
                    value,
                    by,
                )
        await self.settings_mirror.sync()
        return await self.settings()
