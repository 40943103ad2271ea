-- Whether a model's row holds its probes' state ('probe') or, for a model seen only in an
-- application's real traffic, that traffic's ('traffic'). Traffic never changes a probed model's
-- row: its target, host, last status and last seen stay its probes' (a traffic host shown as a
-- stopped model's target would also change which hosts a maintenance window matches).
ALTER TABLE models ADD COLUMN source text NOT NULL DEFAULT 'probe';

-- Rows written before: traffic may have overwritten them. A model with only traffic series is
-- traffic-only; a probed model takes back its latest probe (one index probe per probe series,
-- through telemetry_chart_idx, not a scan of the model's telemetry).
UPDATE models AS m SET source = 'traffic'
WHERE EXISTS (SELECT 1 FROM series AS s
              WHERE s.provider = m.provider AND s.model = m.model AND s.prompt_id LIKE 'traffic:%')
  AND NOT EXISTS (SELECT 1 FROM series AS s
                  WHERE s.provider = m.provider AND s.model = m.model AND s.prompt_id NOT LIKE 'traffic:%');

UPDATE models AS m
SET last_seen = p.ts, target = p.target, host = p.host, last_status = p.status,
    cpu_percent = p.cpu_percent, memory_percent = p.memory_percent, gpu_percent = p.gpu_percent,
    gpu_memory_percent = p.gpu_memory_percent, updated_at = now()
FROM (
    SELECT DISTINCT ON (s.provider, s.model) s.provider, s.model, t.*
    FROM series AS s
    CROSS JOIN LATERAL (
        SELECT t.ts, t.id, t.target, t.host, t.status, t.cpu_percent, t.memory_percent,
               t.gpu_percent, t.gpu_memory_percent
        FROM telemetry AS t
        WHERE t.provider = s.provider AND t.model = s.model AND t.prompt_id = s.prompt_id
          AND t.source = 'probe'
        ORDER BY t.ts DESC, t.id DESC LIMIT 1
    ) AS t
    WHERE s.prompt_id NOT LIKE 'traffic:%'
    ORDER BY s.provider, s.model, t.ts DESC, t.id DESC
) AS p
WHERE m.provider = p.provider AND m.model = p.model AND m.source = 'probe'
  AND (m.last_seen, m.target, m.host, m.last_status) IS DISTINCT FROM (p.ts, p.target, p.host, p.status);
