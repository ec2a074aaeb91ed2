//! The SMTP and S3-compatible servers `./test.sh` starts for the suite
//! (`scripts/test-services.sh`), as the tests find them: through the variables in
//! `.test-services/env`. A missing one fails the test loudly, never skips it.

/// The value of `name`, one of the `WAYMARK_TEST_*` variables the test services write.
pub fn service_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: this test needs the SMTP and S3 test servers. Run ./test.sh, \
             which starts them, or `scripts/test-services.sh start` and export the variables \
             in .test-services/env"
        )
    })
}
