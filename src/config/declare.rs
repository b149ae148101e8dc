//! The macro that turns the one table of settings (`settings.rs`) into everything else: the
//! [`Config`](super::Config) fields, the per-pool [`Overrides`](super::Overrides) and their
//! resolution, the registry [`SETTINGS`](super::SETTINGS) that the flags, the environment
//! variables, the file's key check and the README table are made from, and the reading of
//! every value from text.

/// Where a setting may be given besides the top level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Only at the top level (and as a flag or variable).
    Global,
    /// Also in `[databases.NAME]`.
    Database,
    /// Also in `[users.NAME]`.
    User,
    /// Also in both; a user's value wins over its database's.
    Both,
}

impl Scope {
    /// Whether a setting of this scope may appear in a table of kind `table`
    /// (`Scope::Database` or `Scope::User`).
    pub fn allows(self, table: Scope) -> bool {
        self == Scope::Both || self == table
    }
}

/// One declared setting, as the flags, the file check and the documentation see it.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub key: &'static str,
    /// The doc comment of its declaration: the `--help` text and the README's meaning.
    pub doc: &'static str,
    /// What the value looks like in `--help` (`N`, `DURATION`).
    pub value_name: &'static str,
    /// The `--help` section.
    pub heading: &'static str,
    pub scope: Scope,
    /// The default as a user would write it.
    pub default: fn() -> String,
    /// The only values accepted (enums), empty when open-ended.
    pub choices: fn() -> Vec<String>,
}

impl Setting {
    /// The doc comment as one paragraph.
    pub fn help(&self) -> String {
        let words: Vec<&str> = self.doc.split_whitespace().collect();
        words.join(" ")
    }

    /// The flag (`--pool-size`).
    pub fn flag(&self) -> String {
        self.key.replace('_', "-")
    }

    /// The environment variable (`PGWARDEN_POOL_SIZE`).
    pub fn env(&self) -> String {
        format!("PGWARDEN_{}", self.key.to_ascii_uppercase())
    }
}

/// Generates the configuration from the declarations in `settings.rs`; see there.
macro_rules! declare {
    (
        global {
            $( $(#[doc = $gdoc:literal])+
               $gkey:ident : $gty:ty = $gdefault:expr ; $gvalue:literal , $gheading:ident ; )+
        }
        per_pool {
            $( $(#[doc = $pdoc:literal])+
               $pkey:ident : $pty:ty = $pdefault:expr ; $pvalue:literal , $pheading:ident ,
               $pscope:ident ; )+
        }
    ) => {
        /// Everything pgwarden runs with: every declared setting at its value in force, and
        /// the routes and users. Durations of zero mean "disabled" where the doc says so.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Config {
            $( $(#[doc = $gdoc])+ pub $gkey: $gty, )+
            $( $(#[doc = $pdoc])+ pub $pkey: $pty, )+
            /// Known users: `[users]` of the file merged with `auth_file` (the file wins on
            /// conflict).
            pub users: HashMap<String, User>,
            /// Named database routes.
            pub databases: HashMap<String, Database>,
            /// The `"*"` route: any database name not listed goes here unchanged.
            pub wildcard: Option<Database>,
        }

        /// The per-pool settings a `[databases.NAME]` or `[users.NAME]` entry gives.
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct Overrides {
            $( $(#[doc = $pdoc])+ pub $pkey: Option<$pty>, )+
        }

        /// The per-pool settings in force for one (database, user) pool.
        #[derive(Debug, Clone, PartialEq)]
        pub struct PoolConfig {
            $( $(#[doc = $pdoc])+ pub $pkey: $pty, )+
        }

        /// Every setting, in the order of the table.
        pub const SETTINGS: &[Setting] = &[
            $( Setting {
                key: stringify!($gkey),
                doc: concat!($($gdoc, "\n"),+),
                value_name: $gvalue,
                heading: $gheading,
                scope: Scope::Global,
                default: || <$gty as Value>::show(&$gdefault),
                choices: <$gty as Value>::choices,
            }, )+
            $( Setting {
                key: stringify!($pkey),
                doc: concat!($($pdoc, "\n"),+),
                value_name: $pvalue,
                heading: $pheading,
                scope: Scope::$pscope,
                default: || <$pty as Value>::show(&$pdefault),
                choices: <$pty as Value>::choices,
            }, )+
        ];

        impl Config {
            /// Every top-level setting with its value as a user would write it, in the
            /// order of the table (what a reload compares; no setting here is a secret).
            pub fn values(&self) -> Vec<(&'static str, String)> {
                vec![
                    $( (stringify!($gkey), <$gty as Value>::show(&self.$gkey)), )+
                    $( (stringify!($pkey), <$pty as Value>::show(&self.$pkey)), )+
                ]
            }

            /// The top-level settings from their text (a key missing: its default), with
            /// every value that does not read reported under its key; no routes or users.
            pub(super) fn read(
                raw: &BTreeMap<String, Scalar>,
                report: &mut dyn FnMut(&str, String),
            ) -> Config {
                Config {
                    $( $gkey: read_value::<$gty>(raw.get(stringify!($gkey)),
                        stringify!($gkey), || $gdefault, report), )+
                    $( $pkey: read_value::<$pty>(raw.get(stringify!($pkey)),
                        stringify!($pkey), || $pdefault, report), )+
                    users: HashMap::new(),
                    databases: HashMap::new(),
                    wildcard: None,
                }
            }

            /// Every top-level setting's value in force, as a user would write it, in the
            /// order of the table (SHOW CONFIG).
            pub fn shown(&self) -> Vec<(&'static str, String)> {
                vec![
                    $( (stringify!($gkey), Value::show(&self.$gkey)), )+
                    $( (stringify!($pkey), Value::show(&self.$pkey)), )+
                ]
            }

            /// Sets the top-level setting `key` from its text (as in the file); the reason
            /// when the text does not read, `None` for an unknown key.
            pub fn set_value(&mut self, key: &str, text: &str) -> Option<Result<(), String>> {
                match key {
                    $( stringify!($gkey) => Some(<$gty as Value>::parse(text)
                        .map(|v| self.$gkey = v)), )+
                    $( stringify!($pkey) => Some(<$pty as Value>::parse(text)
                        .map(|v| self.$pkey = v)), )+
                    _ => None,
                }
            }

            /// The per-pool settings for a pool of `route` and `user`: the user's value, else
            /// the database's, else the top level's.
            pub fn pool_config(&self, route: &Database, user: Option<&User>) -> PoolConfig {
                PoolConfig {
                    $( $pkey: user
                        .and_then(|u| u.overrides.$pkey.clone())
                        .or_else(|| route.overrides.$pkey.clone())
                        .unwrap_or_else(|| self.$pkey.clone()), )+
                }
            }
        }

        impl Overrides {
            /// The settings of one `[databases.NAME]` (`table = Scope::Database`) or
            /// `[users.NAME]` entry; `key` names a field for error messages.
            pub(super) fn read(
                entries: &BTreeMap<String, Scalar>,
                table: Scope,
                key: &dyn Fn(&str) -> String,
                report: &mut dyn FnMut(&str, String),
            ) -> Overrides {
                let mut overrides = Overrides::default();
                for (name, value) in entries {
                    $(
                        if name == stringify!($pkey) && Scope::$pscope.allows(table) {
                            overrides.$pkey = read_value::<Option<$pty>>(Some(value),
                                &key(name), || None, report);
                            continue;
                        }
                    )+
                    report(&key(name), misplaced(name, table));
                }
                overrides
            }
        }
    };
}

pub(crate) use declare;
