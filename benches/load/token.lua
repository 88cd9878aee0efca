-- wrk script for the token issuance benchmark: every request is a client_credentials grant
-- with client_secret_basic. run.sh passes the Basic credentials in BENCH_BASIC_AUTH.
wrk.method = "POST"
wrk.body = "grant_type=client_credentials"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic " .. os.getenv("BENCH_BASIC_AUTH")
