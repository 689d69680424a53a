//! The one way every mock upstream is served: actix-web on a free loopback port, one
//! worker, no signal handling, bodies up to 64 MiB.

use std::net::TcpListener;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, web};

/// Serves the routes `configure` adds; returns the base URL and a handle to stop it.
pub fn serve(
    configure: impl Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
) -> (String, ServerHandle) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
            .configure(configure.clone())
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    (format!("http://127.0.0.1:{port}"), handle)
}
