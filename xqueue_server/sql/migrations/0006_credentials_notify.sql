-- 0006: every change to accounts or sessions is announced on the 'xqueue_credentials' channel, so a
-- server process may remember which account a session belongs to between requests and forget it as
-- soon as such a change commits, whoever made it (any replica, xqueue-admin, an import, plain SQL).
-- Statement-level: one notification per statement (and PostgreSQL folds repeats within a transaction).
-- API tokens are not remembered, so they need no trigger.
CREATE FUNCTION xqueue_credentials_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('xqueue_credentials', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER accounts_credentials_changed AFTER UPDATE OR DELETE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION xqueue_credentials_changed();
CREATE TRIGGER accounts_credentials_truncated AFTER TRUNCATE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION xqueue_credentials_changed();
CREATE TRIGGER sessions_credentials_changed AFTER UPDATE OR DELETE ON sessions
    FOR EACH STATEMENT EXECUTE FUNCTION xqueue_credentials_changed();
CREATE TRIGGER sessions_credentials_truncated AFTER TRUNCATE ON sessions
    FOR EACH STATEMENT EXECUTE FUNCTION xqueue_credentials_changed();
