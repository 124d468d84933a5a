-- Upstream XQueue's tables as Django creates them on MySQL/MariaDB (django.contrib.auth and
-- submission_queue, whose model keeps the table name queue_submission), for the import tests.
CREATE TABLE auth_user (
    id integer AUTO_INCREMENT NOT NULL PRIMARY KEY,
    password varchar(128) NOT NULL,
    last_login datetime(6) NULL,
    is_superuser bool NOT NULL,
    username varchar(150) NOT NULL UNIQUE,
    first_name varchar(150) NOT NULL,
    last_name varchar(150) NOT NULL,
    email varchar(254) NOT NULL,
    is_staff bool NOT NULL,
    is_active bool NOT NULL,
    date_joined datetime(6) NOT NULL
) DEFAULT CHARSET=utf8mb4;
CREATE TABLE auth_group (
    id integer AUTO_INCREMENT NOT NULL PRIMARY KEY,
    name varchar(150) NOT NULL UNIQUE
) DEFAULT CHARSET=utf8mb4;
CREATE TABLE auth_user_groups (
    id bigint AUTO_INCREMENT NOT NULL PRIMARY KEY,
    user_id integer NOT NULL,
    group_id integer NOT NULL,
    UNIQUE (user_id, group_id),
    CONSTRAINT auth_user_groups_user_id_fk FOREIGN KEY (user_id) REFERENCES auth_user (id),
    CONSTRAINT auth_user_groups_group_id_fk FOREIGN KEY (group_id) REFERENCES auth_group (id)
) DEFAULT CHARSET=utf8mb4;
CREATE TABLE queue_submission (
    id integer AUTO_INCREMENT NOT NULL PRIMARY KEY,
    requester_id varchar(128) NOT NULL,
    lms_callback_url varchar(128) NOT NULL,
    queue_name varchar(128) NOT NULL,
    xqueue_header varchar(1024) NOT NULL,
    xqueue_body longtext NOT NULL,
    s3_keys varchar(1024) NOT NULL,
    s3_urls varchar(1024) NOT NULL,
    arrival_time datetime(6) NOT NULL,
    pull_time datetime(6) NULL,
    push_time datetime(6) NULL,
    return_time datetime(6) NULL,
    grader_id varchar(128) NOT NULL,
    pullkey varchar(128) NOT NULL,
    grader_reply longtext NOT NULL,
    num_failures integer NOT NULL,
    lms_ack bool NOT NULL,
    retired bool NOT NULL,
    INDEX queue_submission_lms_callback_url_idx (lms_callback_url),
    INDEX queue_submission_retired_idx (retired),
    INDEX queue_submission_queue_pull_idx (queue_name, retired, pull_time, arrival_time),
    INDEX queue_submission_queue_push_idx (queue_name, retired, push_time, arrival_time),
    INDEX queue_submission_callback_retired_idx (lms_callback_url, retired)
) DEFAULT CHARSET=utf8mb4;
