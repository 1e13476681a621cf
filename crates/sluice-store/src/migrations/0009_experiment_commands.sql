-- What people told a running experiment (pause, resume, promote, abort),
-- kept until the experiment takes it: a command sent while the server
-- restarts is taken when the experiment goes on, and each is taken once.
CREATE TABLE experiment_commands (
    id {id},
    experiment_id BIGINT NOT NULL,
    command TEXT NOT NULL,
    actor TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    taken_at BIGINT
);
CREATE INDEX experiment_commands_waiting ON experiment_commands (experiment_id, taken_at);
