//! What a tenant's resources are called, derived from its slug (and, for what is shared
//! between databases, the installation). Pure, so every rule is unit-tested.
//!
//! A slug is `^[a-z][a-z0-9-]{2,39}$` ([`waymark_engine::is_valid_tenant`]). PostgreSQL
//! identifiers are always written quoted through [`quote_ident`], so a name is used
//! exactly as spelt even if a future slug rule allowed more characters.

/// Longest PostgreSQL identifier (NAMEDATALEN - 1): a longer one is silently truncated,
/// which could make two tenants share a role.
pub const MAX_IDENT_BYTES: usize = 63;

/// Slugs that can never be a tenant: the tenant provisioning and system runs belong to.
pub const RESERVED_SLUGS: &[&str] = &["system"];

/// The tenant that owns provisioning and deprovisioning runs (an admin's, not the
/// customer's, so the customer can neither see nor cancel them).
pub const SYSTEM_TENANT: &str = waymark_engine::SYSTEM_TENANT;

/// The slug with `-` as `_`: `acme-eu` → `acme_eu`. Injective, because slugs have no `_`.
pub fn slug_ident(slug: &str) -> String {
    slug.replace('-', "_")
}

/// The tenant's PostgreSQL schema: `tenant_acme_eu`. Schemas live in one database, so
/// the slug alone is unique.
pub fn schema_name(slug: &str) -> String {
    format!("tenant_{}", slug_ident(slug))
}

/// The NOLOGIN role owning the tenant's schema: `waymark_<installation>_<slug>`. Roles
/// are cluster-wide, so the installation id keeps two Waymark databases on one server
/// from sharing (and one dropping) the other's role. At most 8 + 12 + 1 + 40 = 61 bytes.
pub fn role_name(installation: &str, slug: &str) -> String {
    format!("waymark_{installation}_{}", slug_ident(slug))
}

/// `"name"`, with any `"` doubled: a PostgreSQL identifier that means exactly `name`.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The tenant's prefix in the shared blob store: `tenants/<installation>/<slug>/`. The
/// installation keeps two Waymark installations sharing a bucket apart.
pub fn storage_prefix(installation: &str, slug: &str) -> String {
    format!("tenants/{installation}/{slug}/")
}

/// The storage space's manifest object (the tenant's quota and who made the space).
pub fn storage_manifest(installation: &str, slug: &str) -> String {
    format!("{}manifest.json", storage_prefix(installation, slug))
}

/// Where a deprovisioning run leaves its export: outside the tenant's storage space,
/// so deleting the space keeps the export.
pub fn export_prefix(installation: &str, slug: &str, run: uuid::Uuid) -> String {
    format!("exports/{installation}/{slug}/{run}/")
}

/// The tenant's database file in embedded mode: `<data dir>/tenants/<slug>.sqlite3`.
pub fn sqlite_file(data_dir: &std::path::Path, slug: &str) -> std::path::PathBuf {
    data_dir.join("tenants").join(format!("{slug}.sqlite3"))
}

/// Whether `slug` may be provisioned: well-formed and not reserved.
pub fn check_slug(slug: &str) -> Result<(), String> {
    if !waymark_engine::is_valid_tenant(slug) {
        return Err(format!(
            "slug {slug:?} is not valid (expected ^[a-z][a-z0-9-]{{2,39}}$)"
        ));
    }
    Ok(())
}

/// Whether an installation id has the shape the migrations give it: 12 lowercase hex
/// digits. Checked before it goes into names.
pub fn is_installation_id(id: &str) -> bool {
    id.len() == 12
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSTALLATION: &str = "0123456789ab";

    #[test]
    fn schema_and_role_names_replace_dashes_and_keep_the_slug() {
        assert_eq!(schema_name("acme"), "tenant_acme");
        assert_eq!(schema_name("acme-eu-2"), "tenant_acme_eu_2");
        assert_eq!(
            role_name(INSTALLATION, "acme-eu"),
            "waymark_0123456789ab_acme_eu"
        );
    }

    #[test]
    fn the_longest_slug_fits_postgres_identifiers() {
        let slug = format!("a{}", "-".repeat(39));
        assert!(waymark_engine::is_valid_tenant(&slug));
        assert!(role_name(INSTALLATION, &slug).len() <= MAX_IDENT_BYTES);
        assert!(schema_name(&slug).len() <= MAX_IDENT_BYTES);
    }

    #[test]
    fn different_installations_get_different_roles_for_one_slug() {
        assert_ne!(
            role_name("0123456789ab", "acme"),
            role_name("ba9876543210", "acme")
        );
        assert_ne!(
            storage_prefix("0123456789ab", "acme"),
            storage_prefix("ba9876543210", "acme")
        );
    }

    #[test]
    fn distinct_slugs_never_share_a_name() {
        // `-` becomes `_` and slugs cannot contain `_`, so the mapping is one to one.
        assert_ne!(schema_name("a-bc"), schema_name("ab-c"));
        assert_ne!(schema_name("abc"), schema_name("ab-c"));
    }

    #[test]
    fn identifiers_are_always_quoted_and_quotes_doubled() {
        assert_eq!(quote_ident("tenant_acme"), "\"tenant_acme\"");
        assert_eq!(quote_ident("Mixed Case"), "\"Mixed Case\"");
        assert_eq!(
            quote_ident("a\"; DROP ROLE x; --"),
            "\"a\"\"; DROP ROLE x; --\""
        );
    }

    #[test]
    fn storage_and_files_are_named_per_slug() {
        assert_eq!(
            storage_prefix(INSTALLATION, "acme"),
            "tenants/0123456789ab/acme/"
        );
        assert_eq!(
            storage_manifest(INSTALLATION, "acme"),
            "tenants/0123456789ab/acme/manifest.json"
        );
        assert_eq!(
            sqlite_file(std::path::Path::new("/data"), "acme-eu"),
            std::path::PathBuf::from("/data/tenants/acme-eu.sqlite3")
        );
    }

    #[test]
    fn slugs_are_checked_against_the_pattern() {
        assert!(check_slug("acme").is_ok());
        for bad in ["ab", "Acme", "1acme", "acme_eu", "", &"a".repeat(41)] {
            assert!(check_slug(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn installation_ids_are_twelve_lowercase_hex_digits() {
        assert!(is_installation_id("0123456789ab"));
        for bad in [
            "0123456789AB",
            "0123456789a",
            "0123456789abc",
            "012345678 ab",
            "\"; x",
        ] {
            assert!(!is_installation_id(bad), "{bad:?}");
        }
    }
}
