-- Seed 003's core schema, translated to valid PostgreSQL.
--
-- Differences from the seed text, all mechanical:
--  * inline INDEX clauses became CREATE INDEX statements;
--  * CREATE INDEX CONCURRENTLY became CREATE INDEX (migrations run in a transaction);
--  * the vector extension is named `vector` (not "pgvector") and is optional: where it is
--    not installed, mem_docs.embedding is a real[] of the same meaning (see below);
--  * defaults use the built-in gen_random_uuid(); uuid-ossp is still created when available
--    so upstreams that call uuid_generate_v4() keep working.
--  * work_item_status and attempt_status carry orderly's extra states (DESIGN §2).

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'uuid-ossp') THEN
        CREATE EXTENSION IF NOT EXISTS "uuid-ossp";
    END IF;
END
$$;

CREATE TYPE work_order_status AS ENUM ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED');
CREATE TYPE priority AS ENUM ('LOW', 'MEDIUM', 'HIGH', 'URGENT');
-- Operators add item types with: ALTER TYPE work_item_type ADD VALUE 'CONTRACT';
CREATE TYPE work_item_type AS ENUM ('INVOICE', 'TICKET', 'STATUS_REPORT');
CREATE TYPE work_item_status AS ENUM
    ('QUEUED', 'PROCESSING', 'COMPLETED', 'FAILED', 'AWAITING_APPROVAL', 'CANCELLED');
-- LOST: the worker vanished (rescued); INTERRUPTED: released by a clean shutdown.
CREATE TYPE attempt_status AS ENUM
    ('STARTED', 'COMPLETED', 'FAILED', 'TIMEOUT', 'LOST', 'INTERRUPTED');
CREATE TYPE mem_doc_type AS ENUM ('CONTEXT', 'KNOWLEDGE', 'TEMPLATE');
CREATE TYPE approval_decision AS ENUM ('APPROVED', 'REJECTED', 'ESCALATED');
CREATE TYPE connector_type AS ENUM ('SLACK', 'EMAIL', 'API', 'DATABASE');
CREATE TYPE connector_status AS ENUM ('ACTIVE', 'INACTIVE', 'ERROR');

CREATE TABLE work_orders (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    status      work_order_status NOT NULL DEFAULT 'PENDING',
    priority    priority NOT NULL DEFAULT 'MEDIUM',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    metadata    JSONB NOT NULL DEFAULT '{}',
    workflow_id VARCHAR(255) NOT NULL,
    tenant_id   UUID NOT NULL,
    created_by  UUID NOT NULL
);
CREATE INDEX idx_work_orders_status ON work_orders (status);
CREATE INDEX idx_work_orders_priority ON work_orders (priority);
CREATE INDEX idx_work_orders_tenant ON work_orders (tenant_id);
CREATE INDEX idx_work_orders_created_at ON work_orders (created_at);
CREATE INDEX idx_work_orders_composite ON work_orders (tenant_id, status, created_at);

CREATE TABLE work_items (
    id            UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    work_order_id UUID NOT NULL REFERENCES work_orders(id) ON DELETE CASCADE,
    type          work_item_type NOT NULL,
    content       TEXT NOT NULL,
    status        work_item_status NOT NULL DEFAULT 'QUEUED',
    result        JSONB,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    processed_at  TIMESTAMPTZ
);
CREATE INDEX idx_work_items_work_order ON work_items (work_order_id);
CREATE INDEX idx_work_items_type ON work_items (type);
CREATE INDEX idx_work_items_status ON work_items (status);
CREATE INDEX idx_work_items_created_at ON work_items (created_at);

CREATE TABLE attempts (
    id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    work_item_id UUID NOT NULL REFERENCES work_items(id) ON DELETE CASCADE,
    agent_id     VARCHAR(255) NOT NULL,
    status       attempt_status NOT NULL DEFAULT 'STARTED',
    input        JSONB NOT NULL,
    output       JSONB,
    error        TEXT,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at TIMESTAMPTZ,
    duration_ms  INTEGER
);
CREATE INDEX idx_attempts_work_item ON attempts (work_item_id);
CREATE INDEX idx_attempts_agent ON attempts (agent_id);
CREATE INDEX idx_attempts_status ON attempts (status);
CREATE INDEX idx_attempts_started_at ON attempts (started_at);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector') THEN
        CREATE EXTENSION IF NOT EXISTS vector;
        EXECUTE $sql$
            CREATE TABLE mem_docs (
                id            UUID PRIMARY KEY DEFAULT gen_random_uuid(),
                work_item_id  UUID NOT NULL REFERENCES work_items(id) ON DELETE CASCADE,
                type          mem_doc_type NOT NULL,
                content       TEXT NOT NULL,
                embedding     vector(1536),
                metadata      JSONB NOT NULL DEFAULT '{}',
                created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
                last_accessed TIMESTAMPTZ NOT NULL DEFAULT now()
            )$sql$;
        EXECUTE 'CREATE INDEX idx_mem_docs_embedding ON mem_docs
                 USING ivfflat (embedding vector_cosine_ops)';
    ELSE
        -- Without pgvector the embedding is kept as a plain float array (1536 values for
        -- OpenAI embeddings); similarity search is then not available in the database.
        CREATE TABLE mem_docs (
            id            UUID PRIMARY KEY DEFAULT gen_random_uuid(),
            work_item_id  UUID NOT NULL REFERENCES work_items(id) ON DELETE CASCADE,
            type          mem_doc_type NOT NULL,
            content       TEXT NOT NULL,
            embedding     REAL[],
            metadata      JSONB NOT NULL DEFAULT '{}',
            created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
            last_accessed TIMESTAMPTZ NOT NULL DEFAULT now()
        );
    END IF;
END
$$;
CREATE INDEX idx_mem_docs_work_item ON mem_docs (work_item_id);
CREATE INDEX idx_mem_docs_type ON mem_docs (type);

CREATE TABLE approval_events (
    id             UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    work_item_id   UUID NOT NULL REFERENCES work_items(id) ON DELETE CASCADE,
    approver_id    VARCHAR(255) NOT NULL,
    decision       approval_decision NOT NULL,
    reason         TEXT,
    "timestamp"    TIMESTAMPTZ NOT NULL DEFAULT now(),
    policy_version VARCHAR(50) NOT NULL
);
CREATE INDEX idx_approval_events_work_item ON approval_events (work_item_id);
CREATE INDEX idx_approval_events_approver ON approval_events (approver_id);
CREATE INDEX idx_approval_events_timestamp ON approval_events ("timestamp");

CREATE TABLE dead_letters (
    id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    source       VARCHAR(255) NOT NULL,
    event_type   VARCHAR(255) NOT NULL,
    payload      JSONB NOT NULL,
    error        TEXT NOT NULL,
    retry_count  INTEGER NOT NULL DEFAULT 0,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    processed_at TIMESTAMPTZ
);
CREATE INDEX idx_dead_letters_source ON dead_letters (source);
CREATE INDEX idx_dead_letters_event_type ON dead_letters (event_type);
CREATE INDEX idx_dead_letters_created_at ON dead_letters (created_at);

CREATE TABLE connectors (
    id                UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name              VARCHAR(255) NOT NULL,
    type              connector_type NOT NULL,
    config            JSONB NOT NULL,
    status            connector_status NOT NULL DEFAULT 'ACTIVE',
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_health_check TIMESTAMPTZ,
    tenant_id         UUID NOT NULL
);
CREATE INDEX idx_connectors_type ON connectors (type);
CREATE INDEX idx_connectors_status ON connectors (status);
CREATE INDEX idx_connectors_tenant ON connectors (tenant_id);

CREATE TABLE tools (
    id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name         VARCHAR(255) NOT NULL,
    description  TEXT,
    connector_id UUID NOT NULL REFERENCES connectors(id) ON DELETE CASCADE,
    schema       JSONB NOT NULL,
    is_active    BOOLEAN NOT NULL DEFAULT true,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_tools_connector ON tools (connector_id);
CREATE INDEX idx_tools_active ON tools (is_active);

CREATE TABLE capabilities (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name        VARCHAR(255) NOT NULL UNIQUE,
    description TEXT,
    scope       VARCHAR(255) NOT NULL,
    permissions JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_capabilities_scope ON capabilities (scope);

CREATE TABLE tool_capabilities (
    tool_id       UUID NOT NULL REFERENCES tools(id) ON DELETE CASCADE,
    capability_id UUID NOT NULL REFERENCES capabilities(id) ON DELETE CASCADE,
    PRIMARY KEY (tool_id, capability_id)
);

CREATE TABLE schemas (
    id                UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name              VARCHAR(255) NOT NULL,
    version           VARCHAR(50) NOT NULL,
    document_type     VARCHAR(255) NOT NULL,
    schema_definition JSONB NOT NULL,
    is_active         BOOLEAN NOT NULL DEFAULT true,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (name, version)
);
CREATE INDEX idx_schemas_document_type ON schemas (document_type);
CREATE INDEX idx_schemas_active ON schemas (is_active);

CREATE TABLE workflow_templates (
    id                  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name                VARCHAR(255) NOT NULL,
    description         TEXT,
    document_type       VARCHAR(255) NOT NULL,
    workflow_definition JSONB NOT NULL,
    is_active           BOOLEAN NOT NULL DEFAULT true,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_workflow_templates_document_type ON workflow_templates (document_type);
CREATE INDEX idx_workflow_templates_active ON workflow_templates (is_active);

CREATE TABLE eval_results (
    id              UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    work_item_id    UUID NOT NULL REFERENCES work_items(id) ON DELETE CASCADE,
    evaluation_type VARCHAR(255) NOT NULL,
    score           DECIMAL(3,2) NOT NULL CHECK (score >= 0.0 AND score <= 1.0),
    metrics         JSONB NOT NULL,
    passed          BOOLEAN NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_eval_results_work_item ON eval_results (work_item_id);
CREATE INDEX idx_eval_results_type ON eval_results (evaluation_type);
CREATE INDEX idx_eval_results_score ON eval_results (score);

CREATE TABLE audit_logs (
    id            UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id       VARCHAR(255),
    action        VARCHAR(255) NOT NULL,
    resource_type VARCHAR(255) NOT NULL,
    resource_id   UUID,
    details       JSONB NOT NULL,
    ip_address    INET,
    user_agent    TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_audit_logs_user ON audit_logs (user_id);
CREATE INDEX idx_audit_logs_action ON audit_logs (action);
CREATE INDEX idx_audit_logs_resource ON audit_logs (resource_type, resource_id);
CREATE INDEX idx_audit_logs_created_at ON audit_logs (created_at);

CREATE INDEX idx_work_items_composite ON work_items (work_order_id, status, type);
CREATE INDEX idx_attempts_composite ON attempts (work_item_id, status, started_at);
CREATE INDEX idx_work_items_content_fts ON work_items USING gin (to_tsvector('english', content));
CREATE INDEX idx_mem_docs_content_fts ON mem_docs USING gin (to_tsvector('english', content));
