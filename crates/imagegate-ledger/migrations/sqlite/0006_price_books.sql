-- The price book each replica should be using: replicas publish the book they
-- installed from their own file and install the latest one published by any.
CREATE TABLE price_books (
    version       TEXT    PRIMARY KEY NOT NULL, -- blake3 of the text, 12 hex digits
    body          TEXT    NOT NULL,             -- the TOML, as read
    origin        TEXT    NOT NULL,             -- the file (and replica) it came from
    installed_at  INTEGER NOT NULL              -- ms since the Unix epoch, database clock
);
CREATE INDEX price_books_installed_at ON price_books (installed_at);
