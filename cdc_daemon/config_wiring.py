"""Config → the plain values the core takes (root side; merged into wiring.py).

Each function reads one part of the config and hands the core what it needs as plain values;
a ConfigError the core raises about that part gets the part's key path put in front here
(`tables[3]` + `fields.x`), so every message names the key to fix.
"""

from __future__ import annotations

from collections.abc import Mapping

from cdc_daemon.auth import JwtVerifier, TokenRules, hmac_secret, load_jwks, load_public_key
from cdc_daemon.config import (
    Config,
    JwtConfig,
    KmsConfig,
    TableConfig,
    TypesenseConfig,
    read_api_key,
)
from cdc_daemon.database import TableInfo
from cdc_daemon.errors import CdcError, ConfigError
from cdc_daemon.kms import KMS_TIMEOUT, ApiKeys, KmsKey, KmsSource, StaticKey
from cdc_daemon.schema import MappingOptions, TableMapping, build_mapping
from cdc_daemon.startup_checks import Problem, daemon_running, listen_problem

# -- a table -----------------------------------------------------------------------------------


def mapping_options(table: TableConfig, collection_prefix: str = "") -> MappingOptions:
    """A `tables[N]` entry as schema.py's options; `collection_prefix` (typesense's) goes in
    front of the collection's name."""
    return MappingOptions(
        collection=collection_prefix + table.collection_name,
        include=tuple(table.include) if table.include is not None else None,
        exclude=tuple(table.exclude),
        rename=dict(table.rename),
        fields={column: o.model_dump(exclude_none=True) for column, o in table.fields.items()},
        default_sorting_field=table.default_sorting_field,
        where=table.where,
        soft_delete=table.soft_delete,
        id_prefix=table.id_prefix or "",
        manage_collection=table.manage_collection,
    )


def mapping_from_config(
    info: TableInfo, table: TableConfig, entry: str = "tables[?]", collection_prefix: str = ""
) -> TableMapping:
    """The table's mapping; a ConfigError names the bad key under `entry` (`tables[N]`)."""
    try:
        return build_mapping(info, mapping_options(table, collection_prefix))
    except ConfigError as exc:
        raise exc.within(entry) from None


# -- the Typesense API key -----------------------------------------------------------------------


def kms_key(config: KmsConfig, timeout: float = KMS_TIMEOUT) -> KmsKey:
    source = KmsSource(
        url=config.url,
        key_name=config.key_name,
        token_file=config.token_file,
        refresh_interval=config.refresh_interval,
        name="typesense.kms",
    )
    return KmsKey(source, timeout=timeout)


def open_api_keys(config: TypesenseConfig, timeout: float | None = None) -> ApiKeys:
    """The key source the `typesense` section names; a static key is read now (ConfigError if
    it can't be), a KMS key is fetched on first use."""
    if config.kms is not None:
        return kms_key(config.kms, timeout=min(KMS_TIMEOUT, timeout or config.timeout))
    return StaticKey(read_api_key(config))


# -- the admin API's tokens ----------------------------------------------------------------------


def jwt_verifier(config: JwtConfig, environ: Mapping[str, str] | None = None) -> JwtVerifier:
    """The verifier `admin.jwt` asks for, its secret or key file(s) read now; a ConfigError
    names the key (`admin.jwt.secret_env`)."""
    rules = TokenRules(
        algorithms=tuple(config.algorithms),
        issuer=config.issuer,
        audience=config.audience,
        roles_claim=config.roles_claim,
    )
    try:
        if config.secret_env is not None:
            return JwtVerifier(rules, secret=hmac_secret(config.secret_env, environ))
        if config.public_key_file is not None:
            key = load_public_key(config.public_key_file, rules.algorithms)
            return JwtVerifier(rules, public_key=key)
        assert config.jwks_file is not None  # config.py: exactly one source
        return JwtVerifier(rules, jwks=load_jwks(config.jwks_file, rules.algorithms))
    except ConfigError as exc:
        raise exc.within("admin.jwt") from None


def admin_verifier(config: Config) -> JwtVerifier | None:
    """The admin API's verifier; None without a jwt section (loopback only, no tokens)."""
    jwt = config.admin.jwt
    return jwt_verifier(jwt) if jwt is not None else None


# -- what `run` refuses at start -----------------------------------------------------------------


def startup_problems(config: Config) -> list[Problem]:
    """What `run` checks when it starts, beyond the database and Typesense: the admin API's JWT
    key (config errors, exit 2) and whether the metrics and admin addresses are free (exit 1;
    not while a daemon runs: then they are its own)."""
    problems: list[Problem] = []
    admin = config.admin
    if admin.listen and admin.jwt is not None:
        try:
            jwt_verifier(admin.jwt)
        except CdcError as exc:
            problems.append(Problem(str(exc), exc.exit_code))
    bind = not daemon_running(config.database)
    for key, listen in (("metrics.listen", config.metrics.listen), ("admin.listen", admin.listen)):
        problem = listen_problem(key, listen, bind) if listen else None
        if problem is not None:
            problems.append(problem)
    return problems
