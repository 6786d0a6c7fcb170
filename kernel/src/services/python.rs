//! The Python SDK, bundled: the kernel writes it to `$AOS_HOME/python` at start-up and
//! puts that first on its Python services' `PYTHONPATH`, so a Python service needs no
//! installation and always gets the SDK of the kernel that runs it.

use std::path::Path;

const FILES: &[(&str, &str)] = &[
    (
        "aos_sdk/__init__.py",
        include_str!("../../../sdk-py/aos_sdk/__init__.py"),
    ),
    (
        "aos_sdk/client.py",
        include_str!("../../../sdk-py/aos_sdk/client.py"),
    ),
    (
        "aos_sdk/service.py",
        include_str!("../../../sdk-py/aos_sdk/service.py"),
    ),
];

/// Writes the SDK under `dir`, rewriting only files whose content differs.
pub fn install(dir: &Path) -> std::io::Result<()> {
    for (relative, text) in FILES {
        let path = dir.join(relative);
        if std::fs::read_to_string(&path).is_ok_and(|current| current == *text) {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn writes_the_package_once() {
        let dir = tempfile::tempdir().unwrap();
        super::install(dir.path()).unwrap();
        let init = dir.path().join("aos_sdk/__init__.py");
        let modified = std::fs::metadata(&init).unwrap().modified().unwrap();
        super::install(dir.path()).unwrap();
        assert_eq!(
            std::fs::metadata(&init).unwrap().modified().unwrap(),
            modified
        );
        assert!(
            std::fs::read_to_string(init)
                .unwrap()
                .contains("define_service")
        );
    }
}
