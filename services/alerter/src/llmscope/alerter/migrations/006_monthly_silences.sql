-- Monthly maintenance windows: days of the month and/or nth weekdays ('first sun', 'last fri'),
-- with their own local start and end; the time zone column is shared with weekly windows. A
-- silence recurs weekly or monthly, never both. Rows without a monthly window keep NULLs, so
-- existing silences read back unchanged.
ALTER TABLE alerter_silences
    ADD COLUMN monthly_days     integer[],
    ADD COLUMN monthly_weekdays text[],
    ADD COLUMN monthly_start    time,
    ADD COLUMN monthly_end      time,
    ADD CONSTRAINT alerter_silences_one_recurrence CHECK (weekly_days IS NULL OR monthly_start IS NULL);
