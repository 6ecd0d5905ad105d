use super::*;

fn opts(dir: &Path) -> Options {
    Options {
        dir: dir.to_path_buf(),
        cache_bytes: 4 << 20,
        min_free_bytes: 0,
    }
}

#[tokio::test]
async fn embedded_store_passes_the_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(&opts(dir.path())).unwrap();
    crate::store::suite::run_all(&*s).await;
}

#[tokio::test]
async fn everything_is_there_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ms();
    {
        let s = EmbeddedStore::open(&opts(dir.path())).unwrap();
        crate::store::suite::fill(&*s).await;
        s.counters()
            .rate_limit("t:ten_1", &[(Window::Day, 10)], now)
            .await
            .unwrap();
        s.counters().add_tokens("t:ten_1", 40, now).await.unwrap();
        s.flush().await.unwrap();
    }
    let s = EmbeddedStore::open(&opts(dir.path())).unwrap();
    crate::store::suite::check_filled(&*s).await;
    assert_eq!(s.counters().usage("t:ten_1", now).await.unwrap().day, 1);
    assert_eq!(s.counters().tokens_used("t:ten_1", now).await.unwrap(), 40);
}

#[tokio::test]
async fn a_second_open_of_the_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = EmbeddedStore::open(&opts(dir.path())).unwrap();
    let err = EmbeddedStore::open(&opts(dir.path())).unwrap_err();
    assert!(err.contains("in use by another process"), "{err}");
    assert!(err.contains(file::FILE_NAME), "{err}");
}

#[tokio::test]
async fn a_corrupt_file_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(file::FILE_NAME);
    let junk = b"not a database, but someone's data all the same".repeat(200);
    std::fs::write(&path, &junk).unwrap();
    let err = EmbeddedStore::open(&opts(dir.path())).unwrap_err();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), junk);
}
