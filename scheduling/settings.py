"""Every environment variable the scheduler reads, in one place (read once, at start).

Each setting is read from ``SCHEDULING_<NAME>`` or, as the img2cq server has always read it,
``IMG2CQ_<NAME>`` (the first found wins); the database URL from ``DATABASE_URL``."""

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _env(name: str) -> AliasChoices:
    return AliasChoices(f"SCHEDULING_{name}", f"IMG2CQ_{name}")


class SchedulingSettings(BaseSettings):
    """The scheduler's database and its limits."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    database_url: str | None = Field(None, validation_alias=AliasChoices("DATABASE_URL"),
                                     description="any SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db; "
                                                 "unset: the SQLite file of SCHEDULING_DB")
    db: str = Field("./img2cq.db", validation_alias=_env("DB"),
                    description="SQLite file used when DATABASE_URL is unset; set empty (and no DATABASE_URL): "
                                "no database, and no scheduler (its routes are not served)")
    db_connections: int = Field(8, ge=1, le=256, validation_alias=_env("DB_CONNECTIONS"),
                                description="database connections of this process (its pool), and scheduling "
                                            "requests served at once")
    db_queue_size: int = Field(256, ge=0, validation_alias=_env("DB_QUEUE_SIZE"),
                               description="scheduling requests that may wait for a connection; beyond it: 503 "
                                           "with Retry-After")
    db_wait_timeout: float = Field(120.0, gt=0, validation_alias=_env("DB_WAIT_TIMEOUT"),
                                   description="seconds a scheduling request may wait for a connection before "
                                               "it is answered 504")

    @field_validator("database_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        return value or None

    def sqlalchemy_url(self) -> str | None:
        """The database's URL; None where none is configured."""
        if self.database_url:
            return self.database_url
        return "sqlite:///" + self.db if self.db else None

    @property
    def configured(self) -> bool:
        return self.sqlalchemy_url() is not None
