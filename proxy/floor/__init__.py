"""PostgreSQL as the floor under the proxy.

The rules file says which rows and tables each tenant may touch; the proxy
enforces that by rewriting. The floor makes PostgreSQL enforce the same thing
for the upstream role (row-level-security policies keyed on the
``tenant_proxy.tenant`` setting, and grants no wider than the rules), so a
statement the proxy gets wrong still cannot reach another tenant's rows.
``docs/FLOOR.md`` says what it guarantees.

One module per job: :mod:`spec` (what the rules ask of the database),
:mod:`sql` (every statement text), :mod:`catalog` (what the database has),
:mod:`compare` (the differences, with the statements that fix them),
:mod:`install` (apply them), :mod:`monitor` (the running proxy's view).
"""
