-- The alerter's own tables; the API owns telemetry, violations and settings.

-- Every violation episode the alerter has seen, whether or not it notified anyone.
CREATE TABLE alerter_alerts (
    episode_id      text PRIMARY KEY,
    provider        text NOT NULL,
    model           text NOT NULL,
    host            text NOT NULL DEFAULT '',
    rule            text NOT NULL,
    severity        text NOT NULL,
    metric          text NOT NULL,
    opened_at       timestamptz NOT NULL,
    open_event      jsonb NOT NULL,
    cleared_at      timestamptz,
    cleared_event   jsonb,
    acknowledged_at timestamptz,
    acknowledged_by text,
    muted_by        text,
    received_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alerter_alerts_open_idx ON alerter_alerts (opened_at) WHERE cleared_at IS NULL;

-- A `cleared` event that overtook its `open` (redelivery); applied when the open arrives.
CREATE TABLE alerter_early_clears (
    episode_id  text PRIMARY KEY,
    event       jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- Aggregation groups (one route, equal group_by labels); at most one active per key.
CREATE TABLE alerter_groups (
    id              bigserial PRIMARY KEY,
    route           text NOT NULL,
    group_key       text NOT NULL,
    labels          jsonb NOT NULL,
    state           text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'closed')),
    lead_episode_id text NOT NULL,
    created_at      timestamptz NOT NULL,
    next_flush_at   timestamptz NOT NULL,
    closed_at       timestamptz
);
CREATE UNIQUE INDEX alerter_groups_active_key ON alerter_groups (route, group_key) WHERE state = 'active';
CREATE INDEX alerter_groups_due_idx ON alerter_groups (next_flush_at) WHERE state = 'active';

CREATE TABLE alerter_group_alerts (
    group_id   bigint NOT NULL REFERENCES alerter_groups (id),
    episode_id text NOT NULL REFERENCES alerter_alerts (episode_id),
    PRIMARY KEY (group_id, episode_id)
);

-- The notification log and idempotency record: a row is claimed (status 'sending', with a lease)
-- in the same transaction that decides to notify, before anything is sent. A claim whose lease
-- runs out (the sender died) is taken over and sent by another replica or after a restart.
CREATE TABLE alerter_notifications (
    id                text PRIMARY KEY,  -- <group id>:<channel>:<seq>
    group_id          bigint NOT NULL REFERENCES alerter_groups (id),
    route             text NOT NULL,
    group_key         text NOT NULL,
    channel           text NOT NULL,
    channel_kind      text NOT NULL,
    seq               integer NOT NULL,
    reason            text NOT NULL,
    status            text NOT NULL CHECK (status IN ('sending', 'sent', 'failed', 'expired')),
    attempts          integer NOT NULL DEFAULT 0,
    last_error        text,
    detail            text,
    firing            text[] NOT NULL,  -- episodes this message tells as firing
    resolved          text[] NOT NULL,  -- episodes told as resolved so far (this one included)
    announce_resolved text[] NOT NULL,  -- episodes this message announces as resolved
    claimed_by        text,
    lease_until       timestamptz,
    created_at        timestamptz NOT NULL,
    sent_at           timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (group_id, channel, seq)
);
CREATE INDEX alerter_notifications_lease_idx ON alerter_notifications (lease_until) WHERE status = 'sending';
CREATE INDEX alerter_notifications_created_idx ON alerter_notifications (created_at DESC);

CREATE TABLE alerter_delivery_attempts (
    notification_id text NOT NULL REFERENCES alerter_notifications (id),
    attempt         integer NOT NULL,
    at              timestamptz NOT NULL,
    ok              boolean NOT NULL,
    retryable       boolean NOT NULL,
    status_code     integer,
    detail          text NOT NULL,
    instance        text NOT NULL,
    PRIMARY KEY (notification_id, attempt)
);

CREATE TABLE alerter_silences (
    id           text PRIMARY KEY,
    kind         text NOT NULL DEFAULT 'silence' CHECK (kind IN ('silence', 'maintenance')),
    reason       text NOT NULL CHECK (btrim(reason) <> ''),
    author       text NOT NULL CHECK (btrim(author) <> ''),
    providers    text[] NOT NULL DEFAULT '{}',
    models       text[] NOT NULL DEFAULT '{}',
    rules        text[] NOT NULL DEFAULT '{}',
    hosts        text[] NOT NULL DEFAULT '{}',
    starts_at    timestamptz,
    ends_at      timestamptz,
    weekly_days  integer[],
    weekly_start time,
    weekly_end   time,
    timezone     text NOT NULL DEFAULT 'UTC',
    created_at   timestamptz NOT NULL DEFAULT now(),
    expired_at   timestamptz
);

-- Events to publish, written in the transaction that made them (transactional outbox).
CREATE TABLE alerter_outbox (
    id           bigserial PRIMARY KEY,
    subject      text NOT NULL,
    msg_id       text NOT NULL,
    payload      bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX alerter_outbox_pending_idx ON alerter_outbox (id) WHERE published_at IS NULL;
