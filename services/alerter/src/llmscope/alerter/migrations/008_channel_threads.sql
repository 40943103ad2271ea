-- The first message of each thread per channel: Slack's chat.postMessage answers its `ts`, and
-- the incident's later messages go to that thread (`thread_ts`). First writer wins: two
-- replicas posting an incident's first message at once keep one thread.
CREATE TABLE alerter_threads (
    channel    text NOT NULL,
    thread_key text NOT NULL,  -- incident:<id>, or group:<id> outside any incident
    ref        text NOT NULL,  -- Slack's ts
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, thread_key)
);
CREATE INDEX alerter_threads_created_idx ON alerter_threads (created_at);
