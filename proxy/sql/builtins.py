"""What tenants may call and read from PostgreSQL's own catalog.

Allow-lists, not deny-lists (I3): a function or catalog relation missing here
is refused unless the rules file allows it. Functions that run SQL from a
string, touch files, large objects, other databases, server state or session
settings the proxy relies on are absent on purpose; ``DENIED_FUNCTIONS``
names the best-known ones only so refusals can say why.
"""

from __future__ import annotations

SAFE_FUNCTIONS = frozenset("""
abs acos acosd asin asind atan atan2 atand cbrt ceil ceiling cos cosd cot degrees div exp
factorial floor gcd lcm ln log log10 mod pi power radians random round scale sign sin sind
sqrt tan tand trunc width_bucket greatest least numeric_inc trim_scale min_scale
ascii bit_length btrim char_length character_length chr concat concat_ws convert_from
convert_to decode encode format initcap left length lower lpad ltrim md5 normalize
octet_length overlay position quote_ident quote_literal quote_nullable regexp_count
regexp_instr regexp_like regexp_match regexp_matches regexp_replace regexp_split_to_array
regexp_split_to_table regexp_substr repeat replace reverse right rpad rtrim split_part
starts_with string_agg string_to_array string_to_table strpos substr substring to_ascii
to_hex translate trim unistr upper sha224 sha256 sha384 sha512 get_byte get_bit
set_byte set_bit
age clock_timestamp current_date current_time current_timestamp date_bin date_part
date_trunc extract isfinite justify_days justify_hours justify_interval localtime
localtimestamp make_date make_interval make_time make_timestamp make_timestamptz now
statement_timestamp timeofday transaction_timestamp to_char to_date to_number
to_timestamp timezone overlaps
avg bit_and bit_or bit_xor bool_and bool_or count every max min sum array_agg
json_agg jsonb_agg json_object_agg jsonb_object_agg stddev stddev_pop stddev_samp
variance var_pop var_samp corr covar_pop covar_samp regr_avgx regr_avgy regr_count
regr_intercept regr_r2 regr_slope regr_sxx regr_sxy regr_syy mode percentile_cont
percentile_disc rank dense_rank percent_rank cume_dist row_number ntile lag lead
first_value last_value nth_value grouping any_value
array_append array_cat array_dims array_fill array_length array_lower array_ndims
array_position array_positions array_prepend array_remove array_replace array_to_string
array_upper cardinality unnest trim_array array_to_json
to_json to_jsonb json_build_array jsonb_build_array json_build_object jsonb_build_object
json_object jsonb_object json_array_elements jsonb_array_elements json_array_elements_text
jsonb_array_elements_text json_array_length jsonb_array_length json_each jsonb_each
json_each_text jsonb_each_text json_extract_path jsonb_extract_path json_extract_path_text
jsonb_extract_path_text json_object_keys jsonb_object_keys json_populate_record
jsonb_populate_record json_populate_recordset jsonb_populate_recordset json_to_record
jsonb_to_record json_to_recordset jsonb_to_recordset json_strip_nulls jsonb_strip_nulls
jsonb_set jsonb_set_lax jsonb_insert jsonb_pretty json_typeof jsonb_typeof
jsonb_path_exists jsonb_path_match jsonb_path_query jsonb_path_query_array
jsonb_path_query_first row_to_json
coalesce nullif generate_series generate_subscripts gen_random_uuid uuid_in
num_nonnulls num_nulls current_setting similar_to_escape similar_escape pg_collation_for
like_escape pg_get_userbyid to_tsvector to_tsquery plainto_tsquery phraseto_tsquery
websearch_to_tsquery ts_rank ts_rank_cd ts_headline setweight strip tsvector_to_array
array_to_tsvector numnode querytree
is_normalized
format_type pg_typeof current_schema current_schemas current_database current_catalog
current_user session_user user version pg_backend_pid inet_client_addr
pg_get_expr pg_get_constraintdef pg_get_indexdef pg_get_serial_sequence pg_get_viewdef
pg_table_is_visible pg_type_is_visible pg_function_is_visible obj_description
col_description has_table_privilege has_schema_privilege has_column_privilege
has_sequence_privilege pg_encoding_to_char pg_client_encoding
array_in array_out textin textout to_regclass to_regtype to_regproc to_regnamespace
nextval currval lastval txid_current pg_current_xact_id
""".split())

#: Refused with a specific reason, whatever the rules say about the rest.
DENIED_FUNCTIONS = {
    "set_config": "changes session settings the proxy relies on",
    "query_to_xml": "runs SQL given as a string",
    "query_to_xml_and_xmlschema": "runs SQL given as a string",
    "query_to_xmlschema": "runs SQL given as a string",
    "table_to_xml": "reads a whole table by name",
    "table_to_xml_and_xmlschema": "reads a whole table by name",
    "cursor_to_xml": "reads a cursor",
    "database_to_xml": "reads the whole database",
    "schema_to_xml": "reads a whole schema",
    "ts_stat": "runs SQL given as a string",
    "dblink": "opens a second connection the proxy never sees",
    "dblink_exec": "opens a second connection the proxy never sees",
    "dblink_connect": "opens a second connection the proxy never sees",
    "pg_read_file": "reads server files",
    "pg_read_binary_file": "reads server files",
    "pg_ls_dir": "lists server directories",
    "pg_stat_file": "reads server files",
    "lo_import": "reads server files",
    "lo_export": "writes server files",
    "pg_sleep": "timing side channel",
    "pg_sleep_for": "timing side channel",
    "pg_sleep_until": "timing side channel",
    "pg_notify": "notifications go through LISTEN/NOTIFY on the tenant's channels",
    "pg_terminate_backend": "acts on other sessions",
    "pg_cancel_backend": "acts on other sessions",
    "pg_reload_conf": "changes server state",
    "setval": "moves a sequence shared by all tenants",
    **dict.fromkeys(
        "pg_advisory_lock pg_advisory_lock_shared pg_advisory_unlock pg_advisory_unlock_shared "
        "pg_advisory_unlock_all pg_advisory_xact_lock pg_advisory_xact_lock_shared "
        "pg_try_advisory_lock pg_try_advisory_lock_shared pg_try_advisory_xact_lock "
        "pg_try_advisory_xact_lock_shared".split(),
        "advisory locks are one key space shared by all tenants"),
    **dict.fromkeys(
        "pg_relation_size pg_table_size pg_total_relation_size pg_indexes_size "
        "pg_database_size pg_tablespace_size pg_relation_filenode pg_relation_filepath "
        "pg_sequence_last_value pg_current_wal_lsn pg_current_wal_insert_lsn".split(),
        "sizes and positions count every tenant's rows"),
    **dict.fromkeys(
        "txid_status pg_xact_status pg_xact_commit_timestamp "
        "pg_xact_commit_timestamp_origin pg_last_committed_xact txid_current_snapshot "
        "pg_current_snapshot pg_lock_status pg_blocking_pids "
        "pg_safe_snapshot_blocking_pids".split(),
        "shows other sessions' transactions"),
    **dict.fromkeys("pg_show_all_settings pg_show_all_file_settings".split(),
                    "shows the server's configuration"),
}

#: Function-name prefixes (and catalog relation prefixes) of server statistics,
#: refused whatever functions.allow or catalog.allow say.
SIDE_CHANNEL_PREFIXES = ("pg_stat_", "pg_statio_", "pg_stats", "pg_statistic")

#: Functions PostgreSQL also calls in attribute notation: ``c.row_to_json`` is
#: ``row_to_json(c)``, a whole-row reference (``pg_proc`` entries whose only
#: required argument is record or polymorphic, PostgreSQL 15).
ATTRIBUTE_FUNCTIONS = frozenset("""
array_agg json_agg jsonb_agg row_to_json to_json to_jsonb record_out record_send hash_record
concat json_build_array json_build_object jsonb_build_array jsonb_build_object mode
num_nonnulls num_nulls pg_column_size pg_column_compression quote_literal quote_nullable
any_out anyelement_out anynonarray_out anycompatible_out anycompatiblenonarray_out
count rank dense_rank percent_rank cume_dist first_value last_value lag lead pg_typeof
pg_collation_for
""".split())

#: pg_catalog and information_schema relations drivers and ORMs read for type
#: and schema introspection. Statistics (pg_stats, pg_class.reltuples is a
#: column, not a relation, so pg_class stays readable), activity and
#: authentication views are not here.
SAFE_CATALOG = frozenset("""
pg_catalog.pg_type pg_catalog.pg_namespace pg_catalog.pg_class pg_catalog.pg_attribute
pg_catalog.pg_attrdef pg_catalog.pg_index pg_catalog.pg_constraint pg_catalog.pg_enum
pg_catalog.pg_range pg_catalog.pg_description pg_catalog.pg_am pg_catalog.pg_collation
pg_catalog.pg_proc pg_catalog.pg_inherits pg_catalog.pg_depend pg_catalog.pg_sequence
pg_catalog.pg_database pg_catalog.pg_extension pg_catalog.pg_trigger
pg_catalog.pg_opclass pg_catalog.pg_operator pg_catalog.pg_cast pg_catalog.pg_tables
pg_catalog.pg_views pg_catalog.pg_indexes pg_catalog.pg_matviews pg_catalog.pg_sequences
pg_catalog.pg_roles pg_catalog.pg_tablespace pg_catalog.pg_language
pg_catalog.pg_partitioned_table pg_catalog.pg_foreign_table pg_catalog.pg_policy
information_schema.tables information_schema.columns information_schema.schemata
information_schema.views information_schema.table_constraints
information_schema.key_column_usage information_schema.referential_constraints
information_schema.constraint_column_usage information_schema.routines
information_schema.parameters information_schema.sequences
information_schema.element_types information_schema.check_constraints
""".split())

CATALOG_SCHEMAS = ("pg_catalog", "information_schema")

#: Columns that count or locate rows of every tenant, by catalog relation. These
#: relations are readable column by column only (no ``*``, whole-row references or
#: column aliases); every other readable catalog relation may be read whole.
SENSITIVE_CATALOG_COLUMNS = {
    "pg_catalog.pg_class": frozenset({"reltuples", "relpages", "relallvisible",
                                      "relfrozenxid", "relminmxid", "relfilenode"}),
    "pg_catalog.pg_sequences": frozenset({"last_value"}),
    "pg_catalog.pg_database": frozenset({"datfrozenxid", "datminmxid"}),
}

#: Catalog relations refused with a reason even if listed in catalog.allow.
SENSITIVE_CATALOG = {
    "pg_catalog.pg_stats": "planner statistics hold sampled values of every tenant",
    "pg_catalog.pg_statistic": "planner statistics hold sampled values of every tenant",
    "pg_catalog.pg_stat_activity": "shows other sessions and their queries",
    "pg_catalog.pg_stat_statements": "shows other tenants' statements",
    "pg_catalog.pg_authid": "holds password verifiers",
    "pg_catalog.pg_shadow": "holds password verifiers",
    "pg_catalog.pg_user_mapping": "holds foreign-server credentials",
    "pg_catalog.pg_largeobject": "large objects are not tenant-scoped",
    "pg_catalog.pg_hba_file_rules": "server configuration",
    "pg_catalog.pg_file_settings": "server configuration",
    "pg_catalog.pg_settings": "server configuration (paths, addresses, limits); SHOW and "
                              "current_setting() read the readable settings",
    "pg_catalog.pg_db_role_setting": "server configuration",
    "pg_catalog.pg_config": "server configuration",
    "pg_catalog.pg_locks": "shows every session's locks, advisory keys included",
    "pg_catalog.pg_prepared_xacts": "shows other sessions' transactions",
    "pg_catalog.pg_replication_slots": "server state",
}

#: Session settings a tenant role may SET or RESET.
SAFE_SETTINGS = frozenset("""
application_name statement_timeout lock_timeout idle_in_transaction_session_timeout
idle_session_timeout timezone datestyle intervalstyle extra_float_digits bytea_output
client_min_messages default_transaction_isolation default_transaction_read_only
default_transaction_deferrable transaction_isolation transaction_read_only
transaction_deferrable enable_seqscan enable_indexscan enable_bitmapscan
enable_hashjoin enable_mergejoin enable_nestloop work_mem jit
""".split())

#: Settings a tenant may read with SHOW or current_setting(): those it may set,
#: and read-only facts drivers ask for. Paths, addresses, limits and the upstream
#: role are not here.
READABLE_SETTINGS = SAFE_SETTINGS | frozenset("""
server_version server_version_num server_encoding client_encoding integer_datetimes
standard_conforming_strings max_identifier_length search_path in_hot_standby
lc_collate lc_ctype lc_messages lc_monetary lc_numeric lc_time default_text_search_config
tenant_proxy.tenant
""".split())
