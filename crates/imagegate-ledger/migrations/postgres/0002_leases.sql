-- Cross-replica single flight: who is producing a content key, and until when.
CREATE TABLE leases (
    key         TEXT    PRIMARY KEY,            -- content key, hex
    holder      TEXT    NOT NULL,               -- replica and request that hold it
    expires_at  BIGINT  NOT NULL                -- ms since the Unix epoch, database clock
);
