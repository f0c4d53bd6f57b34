-- A small multi-tenant schema for `tenant-proxy demo`.
-- Tenant-scoped tables carry tenant_id; countries is shared reference data.

CREATE TABLE tenants (
    id   bigint PRIMARY KEY,
    name text NOT NULL
);

CREATE TABLE countries (
    code char(2) PRIMARY KEY,
    name text NOT NULL
);

CREATE TABLE customers (
    id        bigserial PRIMARY KEY,
    tenant_id bigint NOT NULL REFERENCES tenants(id),
    name      text   NOT NULL,
    country   char(2) REFERENCES countries(code)
);

CREATE TABLE invoices (
    id          bigserial PRIMARY KEY,
    tenant_id   bigint  NOT NULL REFERENCES tenants(id),
    customer_id bigint  NOT NULL REFERENCES customers(id),
    amount      numeric(12,2) NOT NULL,
    issued_on   date    NOT NULL DEFAULT current_date
);

INSERT INTO tenants VALUES (1, 'Acme'), (2, 'Globex');
INSERT INTO countries VALUES ('DE', 'Germany'), ('FR', 'France'), ('US', 'United States');
INSERT INTO customers (tenant_id, name, country) VALUES
    (1, 'Wile E. Coyote', 'US'), (1, 'Road Runner', 'US'),
    (2, 'Hank Scorpio', 'FR'), (2, 'Homer Simpson', 'US');
INSERT INTO invoices (tenant_id, customer_id, amount) VALUES
    (1, 1, 120.00), (1, 2, 75.50), (2, 3, 9999.99), (2, 4, 12.00);

-- One database role for every tenant login: the proxy, not PostgreSQL, keeps
-- tenants apart. (PostgreSQL sees role "app"; acme, globex and app log in to
-- the proxy.)
CREATE ROLE app LOGIN PASSWORD 'app-password';
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app;
