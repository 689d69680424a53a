//! Building and running the application: connect, migrate, bootstrap, load the
//! catalog, start the writer and the server. Tests build it on port 0.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, web};
use anyhow::Context;
use arc_swap::ArcSwap;
use billing::{LedgerWriter, Wallet};
use jsonwebtoken::{DecodingKey, EncodingKey};
use relay_core::upstream::UpstreamClient;
use store::Shared;
use store::secret::SecretBox;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::state::{AppState, Reloader, Snapshot};
use crate::{Config, generation, health, relay};

/// How long an idle client connection stays open. Clients send the next request on a
/// connection they kept idle (httpx, under the OpenAI and Anthropic Python SDKs, for
/// up to 5 s; Go and reqwest for up to 90 s): a server closing it at the same moment
/// races them, and the request is lost as a reset connection. actix's default is
/// exactly 5 s; this is longer than any of those clients keeps one.
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(120);

/// A built, bound, not yet running gateway.
pub struct Application {
    server: Server,
    port: u16,
    state: web::Data<AppState>,
    writer_task: JoinHandle<()>,
}

impl Application {
    /// Connects everything and binds the listener.
    pub async fn build(mut config: Config) -> anyhow::Result<Self> {
        let db = store::db::connect(&config.database_url)
            .await
            .context("cannot open the database")?;
        let shared = Arc::new(match &config.redis_url {
            Some(url) => Shared::redis(url, &config.redis_prefix)
                .await
                .context("cannot reach Redis at REDIS_URL")?,
            None => Shared::memory(),
        });
        let secrets =
            SecretBox::from_text(&config.secret_key_text()?).context("TOLLGATE_SECRET_KEY")?;
        // The environment's tunables are the defaults; those an admin stored win.
        let env_tunables = config.tunables;
        config.tunables = store::settings::effective(&db, env_tunables)
            .await
            .context("cannot read the stored settings")?;
        let wallet = Arc::new(Wallet::new(db.clone(), &shared));
        if let Some(password) =
            admin_web::bootstrap::ensure_root(&db, &wallet, config.root_password.clone())
                .await
                .map_err(|e| anyhow::anyhow!("cannot create root: {e:?}"))?
        {
            tracing::warn!(
                "created user 'root' with the generated password {password} — it is shown only this once; change it after logging in"
            );
        }
        wallet
            .refresh()
            .await
            .map_err(|e| anyhow::anyhow!("cannot load wallets: {e:?}"))?;
        wallet.start_maintenance(std::time::Duration::from_secs(config.lease_ttl_s));
        let jwt = admin_web::bootstrap::jwt_secret(&db, config.jwt_secret.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot load the JWT secret: {e:?}"))?;

        let instance = uuid::Uuid::now_v7().simple().to_string();
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
        let breakers = Arc::new(relay_core::health::Breakers::new(config.tunables.into()));
        let reloader = Reloader {
            db: db.clone(),
            secrets: secrets.clone(),
            snapshot: Arc::clone(&snapshot),
            shared: Arc::clone(&shared),
            instance: instance.clone(),
            defaults: env_tunables,
            breakers: Arc::clone(&breakers),
            versions: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        };
        reloader
            .reload_local()
            .await
            .context("cannot load the catalog")?;
        reloader.follow();

        // The writer gets a pool of its own, made here on the main runtime: the shared
        // pool may hold connections opened on HTTP worker runtimes, which are gone by
        // the time the writer flushes at shutdown.
        let writer_db = store::db::connect_writer(&config.database_url)
            .await
            .context("cannot open the database for the ledger writer")?;
        let (writer, writer_task) = LedgerWriter::start(writer_db, Arc::clone(&wallet));
        let client = UpstreamClient::new().map_err(|e| anyhow::anyhow!("{e}"))?;
        let availability = Arc::new(store::Availability::default());
        health::spawn_probe(db.clone(), Arc::clone(&shared), Arc::clone(&availability));
        let health = Arc::new(relay_core::persisted_health::PersistedHealth::new(
            db.clone(),
            Arc::new(reloader.clone()),
            client.clone(),
            Arc::clone(&breakers),
        ));
        let tasks = TaskTracker::new();
        let metrics = Arc::new(relay_core::metrics::Metrics::new());
        let pipeline = relay_core::pipeline::Pipeline {
            settler: relay_core::meter::Settler {
                wallet: Arc::clone(&wallet) as Arc<dyn relay_core::funds::Funds>,
                writer: Arc::new(writer.clone()),
                tasks: tasks.clone(),
                metrics: Arc::clone(&metrics),
            },
            shared: Arc::clone(&shared),
            availability: Arc::clone(&availability),
            client: client.clone(),
            breakers: Arc::clone(&breakers),
            health: health.clone(),
            max_body_mb: config.max_body_mb,
            max_upstream_mb: config.max_upstream_mb,
        };
        let jobs = Arc::new(
            relay_core::task::TaskEngine::new(
                db.clone(),
                Arc::clone(&wallet),
                config.tasks,
                secrets.clone(),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        );
        let state = web::Data::new(AppState {
            db: db.clone(),
            shared: Arc::clone(&shared),
            wallet: Arc::clone(&wallet),
            writer,
            tasks,
            snapshot,
            client,
            secrets: secrets.clone(),
            config: config.clone(),
            instance,
            reloader: reloader.clone(),
            breakers,
            health,
            availability,
            metrics,
            pipeline,
            jobs,
        });
        let admin = web::Data::new(admin_web::AdminState {
            db,
            shared,
            wallet,
            secrets,
            jwt_encoding: EncodingKey::from_secret(&jwt),
            jwt_decoding: DecodingKey::from_secret(&jwt),
            session_hours: 24,
            reloader: Arc::new(reloader),
            tester: Arc::new(crate::channel_health::GatewayTester(state.clone())),
            tunables: env_tunables,
            trusted_proxies: config.trusted_proxies.clone(),
            availability: Arc::clone(&state.availability),
        });

        let listener = TcpListener::bind(&config.addr)
            .with_context(|| format!("cannot listen on {}", config.addr))?;
        let port = listener.local_addr()?.port();
        let app_state = state.clone();
        let mut server = actix_web::HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                .app_data(admin.clone())
                .route("/healthz", web::get().to(health::healthz))
                .route("/readyz", web::get().to(health::readyz))
                .route("/metrics", web::get().to(health::metrics))
                .configure(relay::configure)
                .configure(crate::videos::configure)
                .configure(crate::seedance::configure)
                .configure(crate::kling::configure)
                .configure(crate::dashscope::configure)
                .configure(crate::veo::configure)
                .configure(crate::midjourney::configure)
                .configure(crate::suno::configure)
                .configure(generation::configure)
                .configure(crate::dashboard::configure)
                .configure(admin_web::configure)
                .configure(admin_web::console::configure)
        })
        .listen(listener)?
        .keep_alive(KEEP_ALIVE)
        .shutdown_timeout(30);
        if let Some(w) = config.workers {
            server = server.workers(w.max(1));
        }
        if !config.handle_signals {
            server = server.disable_signals();
        }
        crate::tunables::spawn_health_job(state.clone(), env_tunables);
        if let Some(days) = config.log_retention_days {
            crate::tunables::spawn_retention_job(state.clone(), days, config.log_retention_every);
        }
        crate::videos::spawn_poller(
            state.clone(),
            config.tasks.poll_min.min(std::time::Duration::from_secs(1)),
        );
        tracing::info!(addr = %config.addr, port, "tollgate listening");
        Ok(Application {
            server: server.run(),
            port,
            state,
            writer_task,
        })
    }

    /// The bound port (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The shared state (tests read the database through it).
    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// A handle to stop the server gracefully.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped (a signal, or the handle), then lets in-flight requests
    /// finish, waits for their settlements, and flushes the writer.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.server.await?;
        self.state.tasks.close();
        self.state.tasks.wait().await;
        self.state.writer.flush().await;
        self.state.wallet.leave().await;
        drop(self.state);
        self.writer_task.abort();
        tracing::info!("tollgate stopped; pending writes flushed");
        Ok(())
    }
}
