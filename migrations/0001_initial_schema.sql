-- Migration number: 0001 ⏱️ 2026-11-24T15:50:00Z
-- Initial schema of Trading Cloud Brain: the trading ledger, the AI signal and learning log, news, briefings, payment connections, orders, monitoring and Telegram audit trail.
-- Environment: D1 (Cloudflare SQLite)
--
-- Conventions: TEXT ids (UUIDs or provider ids), INTEGER timestamps in Unix epoch
-- seconds (UTC), REAL prices and quantities, JSON payloads in TEXT columns checked
-- with json_valid(). IF NOT EXISTS throughout, so a partially built database from
-- before this tool can be brought under it.

-- The AI decision log: every signal the models produced, acted on or not.
CREATE TABLE IF NOT EXISTS signals (
    id              TEXT PRIMARY KEY NOT NULL,
    symbol          TEXT NOT NULL,
    timeframe       TEXT NOT NULL,
    direction       TEXT NOT NULL CHECK (direction IN ('long', 'short', 'neutral')),
    confidence      REAL NOT NULL CHECK (confidence BETWEEN 0 AND 1),
    price           REAL NOT NULL CHECK (price > 0),
    model_version   TEXT NOT NULL,
    reasoning       TEXT,
    features        TEXT CHECK (features IS NULL OR json_valid(features)),
    acted_on        INTEGER NOT NULL DEFAULT 0 CHECK (acted_on IN (0, 1)),
    created_at      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_signals_symbol_created ON signals (symbol, created_at);
CREATE INDEX IF NOT EXISTS idx_signals_created ON signals (created_at);

-- The trading ledger: one row per position, opened and (later) closed.
CREATE TABLE IF NOT EXISTS trades (
    id              TEXT PRIMARY KEY NOT NULL,
    symbol          TEXT NOT NULL,
    side            TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
    quantity        REAL NOT NULL CHECK (quantity > 0),
    entry_price     REAL NOT NULL CHECK (entry_price > 0),
    exit_price      REAL CHECK (exit_price IS NULL OR exit_price > 0),
    stop_loss       REAL,
    take_profit     REAL,
    status          TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed', 'cancelled')),
    pnl             REAL,
    fees            REAL NOT NULL DEFAULT 0,
    signal_id       TEXT REFERENCES signals (id) ON DELETE SET NULL,
    broker          TEXT,
    opened_at       INTEGER NOT NULL,
    closed_at       INTEGER CHECK (closed_at IS NULL OR closed_at >= opened_at),
    notes           TEXT,
    created_at      INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER)),
    updated_at      INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER))
);
CREATE INDEX IF NOT EXISTS idx_trades_symbol_opened ON trades (symbol, opened_at);
CREATE INDEX IF NOT EXISTS idx_trades_status ON trades (status);
CREATE INDEX IF NOT EXISTS idx_trades_signal ON trades (signal_id);

-- What happened around a signal: market context and the score of each component.
CREATE TABLE IF NOT EXISTS signal_events (
    id                  TEXT PRIMARY KEY NOT NULL,
    signal_id           TEXT NOT NULL REFERENCES signals (id) ON DELETE CASCADE,
    event_type          TEXT NOT NULL CHECK (event_type IN ('generated', 'filtered', 'executed', 'expired', 'invalidated')),
    market_price        REAL,
    market_volume       REAL,
    volatility          REAL,
    market_regime       TEXT CHECK (market_regime IS NULL OR market_regime IN ('trending', 'ranging', 'volatile')),
    technical_score     REAL CHECK (technical_score IS NULL OR technical_score BETWEEN -1 AND 1),
    sentiment_score     REAL CHECK (sentiment_score IS NULL OR sentiment_score BETWEEN -1 AND 1),
    fundamental_score   REAL CHECK (fundamental_score IS NULL OR fundamental_score BETWEEN -1 AND 1),
    composite_score     REAL CHECK (composite_score IS NULL OR composite_score BETWEEN -1 AND 1),
    context             TEXT CHECK (context IS NULL OR json_valid(context)),
    created_at          INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_signal_events_signal ON signal_events (signal_id, created_at);
CREATE INDEX IF NOT EXISTS idx_signal_events_type ON signal_events (event_type, created_at);

-- How each signal turned out, to track accuracy over time.
CREATE TABLE IF NOT EXISTS signal_outcomes (
    id                  TEXT PRIMARY KEY NOT NULL,
    signal_id           TEXT NOT NULL REFERENCES signals (id) ON DELETE CASCADE,
    horizon_minutes     INTEGER NOT NULL CHECK (horizon_minutes > 0),
    price_at_signal     REAL NOT NULL CHECK (price_at_signal > 0),
    price_at_horizon    REAL NOT NULL CHECK (price_at_horizon > 0),
    return_pct          REAL NOT NULL,
    was_correct         INTEGER NOT NULL CHECK (was_correct IN (0, 1)),
    evaluated_at        INTEGER NOT NULL,
    UNIQUE (signal_id, horizon_minutes)
);
CREATE INDEX IF NOT EXISTS idx_signal_outcomes_evaluated ON signal_outcomes (evaluated_at);

-- Rolling model quality figures, one row per metric and period.
CREATE TABLE IF NOT EXISTS learning_metrics (
    id              TEXT PRIMARY KEY NOT NULL,
    model_version   TEXT NOT NULL,
    metric_name     TEXT NOT NULL,
    metric_value    REAL NOT NULL,
    sample_size     INTEGER NOT NULL DEFAULT 0 CHECK (sample_size >= 0),
    period_start    INTEGER NOT NULL,
    period_end      INTEGER NOT NULL CHECK (period_end >= period_start),
    created_at      INTEGER NOT NULL,
    UNIQUE (model_version, metric_name, period_start)
);
CREATE INDEX IF NOT EXISTS idx_learning_metrics_name_period ON learning_metrics (metric_name, period_end);

-- Every change of the component weights, with the reason for it.
CREATE TABLE IF NOT EXISTS weight_history (
    id              TEXT PRIMARY KEY NOT NULL,
    component       TEXT NOT NULL,
    old_weight      REAL,
    new_weight      REAL NOT NULL CHECK (new_weight BETWEEN 0 AND 1),
    reason          TEXT,
    metric_id       TEXT REFERENCES learning_metrics (id) ON DELETE SET NULL,
    changed_at      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_weight_history_component ON weight_history (component, changed_at);

-- News items with their sentiment.
CREATE TABLE IF NOT EXISTS news (
    id                  TEXT PRIMARY KEY NOT NULL,
    source              TEXT NOT NULL,
    url                 TEXT UNIQUE,
    title               TEXT NOT NULL,
    summary             TEXT,
    symbols             TEXT CHECK (symbols IS NULL OR json_valid(symbols)),
    sentiment           TEXT CHECK (sentiment IS NULL OR sentiment IN ('positive', 'negative', 'neutral')),
    sentiment_score     REAL CHECK (sentiment_score IS NULL OR sentiment_score BETWEEN -1 AND 1),
    published_at        INTEGER NOT NULL,
    fetched_at          INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_news_published ON news (published_at);
CREATE INDEX IF NOT EXISTS idx_news_sentiment ON news (sentiment, published_at);

-- The daily AI briefing, one per day and kind.
CREATE TABLE IF NOT EXISTS briefings (
    id              TEXT PRIMARY KEY NOT NULL,
    briefing_date   TEXT NOT NULL CHECK (briefing_date GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]'),
    kind            TEXT NOT NULL DEFAULT 'daily' CHECK (kind IN ('daily', 'weekly', 'alert')),
    content         TEXT NOT NULL,
    market_outlook  TEXT CHECK (market_outlook IS NULL OR market_outlook IN ('bullish', 'bearish', 'neutral')),
    model_version   TEXT,
    created_at      INTEGER NOT NULL,
    UNIQUE (briefing_date, kind)
);

-- OAuth connections to payment and brokerage providers; tokens are stored encrypted.
CREATE TABLE IF NOT EXISTS user_connections (
    id                      TEXT PRIMARY KEY NOT NULL,
    user_id                 TEXT NOT NULL,
    provider                TEXT NOT NULL,
    provider_account_id     TEXT,
    access_token_encrypted  TEXT NOT NULL,
    refresh_token_encrypted TEXT,
    scopes                  TEXT,
    expires_at              INTEGER,
    status                  TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked', 'expired', 'error')),
    created_at              INTEGER NOT NULL,
    updated_at              INTEGER NOT NULL,
    UNIQUE (user_id, provider)
);
CREATE INDEX IF NOT EXISTS idx_user_connections_status ON user_connections (status, expires_at);

-- Orders sent to a broker, each linked to the trade it opens or closes.
CREATE TABLE IF NOT EXISTS trade_orders (
    id                  TEXT PRIMARY KEY NOT NULL,
    trade_id            TEXT REFERENCES trades (id) ON DELETE SET NULL,
    connection_id       TEXT REFERENCES user_connections (id) ON DELETE SET NULL,
    broker_order_id     TEXT,
    symbol              TEXT NOT NULL,
    side                TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
    order_type          TEXT NOT NULL CHECK (order_type IN ('market', 'limit', 'stop', 'stop_limit')),
    quantity            REAL NOT NULL CHECK (quantity > 0),
    limit_price         REAL,
    stop_price          REAL,
    filled_quantity     REAL NOT NULL DEFAULT 0 CHECK (filled_quantity >= 0),
    average_fill_price  REAL,
    status              TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'submitted', 'partially_filled', 'filled', 'cancelled', 'rejected')),
    error_message       TEXT,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_trade_orders_trade ON trade_orders (trade_id);
CREATE INDEX IF NOT EXISTS idx_trade_orders_status ON trade_orders (status, created_at);
CREATE UNIQUE INDEX IF NOT EXISTS idx_trade_orders_broker ON trade_orders (connection_id, broker_order_id) WHERE broker_order_id IS NOT NULL;

-- Alerts raised by the system, open until acknowledged or resolved.
CREATE TABLE IF NOT EXISTS system_alerts (
    id              TEXT PRIMARY KEY NOT NULL,
    severity        TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'error', 'critical')),
    category        TEXT NOT NULL,
    message         TEXT NOT NULL,
    details         TEXT CHECK (details IS NULL OR json_valid(details)),
    acknowledged    INTEGER NOT NULL DEFAULT 0 CHECK (acknowledged IN (0, 1)),
    resolved_at     INTEGER,
    created_at      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_system_alerts_open ON system_alerts (acknowledged, severity, created_at);

-- Health samples of each component (latency, error rate, queue depth...).
CREATE TABLE IF NOT EXISTS system_monitoring (
    id              TEXT PRIMARY KEY NOT NULL,
    component       TEXT NOT NULL,
    metric          TEXT NOT NULL,
    value           REAL NOT NULL,
    unit            TEXT,
    status          TEXT NOT NULL DEFAULT 'ok' CHECK (status IN ('ok', 'degraded', 'down')),
    recorded_at     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_system_monitoring_component ON system_monitoring (component, metric, recorded_at);

-- Audit trail of every report sent to Telegram.
CREATE TABLE IF NOT EXISTS telegram_reports (
    id              TEXT PRIMARY KEY NOT NULL,
    chat_id         TEXT NOT NULL,
    report_type     TEXT NOT NULL CHECK (report_type IN ('briefing', 'trade', 'alert', 'summary', 'other')),
    briefing_id     TEXT REFERENCES briefings (id) ON DELETE SET NULL,
    trade_id        TEXT REFERENCES trades (id) ON DELETE SET NULL,
    message         TEXT NOT NULL,
    telegram_message_id TEXT,
    status          TEXT NOT NULL DEFAULT 'sent' CHECK (status IN ('sent', 'failed')),
    error_message   TEXT,
    sent_at         INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_telegram_reports_sent ON telegram_reports (sent_at);
CREATE INDEX IF NOT EXISTS idx_telegram_reports_type ON telegram_reports (report_type, sent_at);
