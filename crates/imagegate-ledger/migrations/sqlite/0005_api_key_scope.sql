-- What a key may see and do: `standard` keys see their own costs; `admin` keys see
-- every key's and may republish (`cache: refresh`). Existing keys stay standard.
ALTER TABLE api_keys ADD COLUMN scope TEXT NOT NULL DEFAULT 'standard'
    CHECK (scope IN ('standard', 'admin'));
