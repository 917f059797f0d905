################################################################################
#
# havms
#
################################################################################

HAVMS_VERSION = 0.1.0
# The workspace this tree sits in (buildroot/..), copied without its build output.
HAVMS_SITE = $(BR2_EXTERNAL_HAVMS_PATH)/..
HAVMS_SITE_METHOD = local
HAVMS_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = --exclude target --exclude buildroot
HAVMS_LICENSE = Apache-2.0

# A local package skips Buildroot's download step, which is where cargo-package vendors the
# crates; `cargo vendor` at the workspace root (docs/buildroot.md) does it instead, and this
# points cargo at the result so the --offline --locked build finds every crate.
define HAVMS_USE_VENDORED_CRATES
	@test -d $(@D)/vendor || { \
		echo "havms: $(@D)/vendor is missing: run 'cargo vendor --locked' at the"; \
		echo "havms: workspace root on a machine with internet (docs/buildroot.md)"; \
		exit 1; }
	mkdir -p $(@D)/.cargo
	printf '[source.crates-io]\nreplace-with = "vendored-sources"\n\n[source.vendored-sources]\ndirectory = "vendor"\n' \
		> $(@D)/.cargo/config.toml
endef
HAVMS_POST_RSYNC_HOOKS += HAVMS_USE_VENDORED_CRATES

# The node has no dynamic loader for our binaries: link them statically, as the Debian
# image does (xtask/src/build.rs).
HAVMS_CARGO_ENV = RUSTFLAGS="-C target-feature=+crt-static"
HAVMS_CARGO_BUILD_OPTS = \
	-p havms-init -p havms-supervisor -p havms-vmm -p havms-installer \
	--bin havms-init --bin havmsd --bin havms \
	--bin havms-vm --bin havms-remote --bin havms-installer

HAVMS_BINARIES = havmsd havms havms-vm havms-remote havms-installer

# The workspace root has no package to `cargo install`: copy the built binaries.
define HAVMS_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 \
		$(@D)/target/$(RUSTC_TARGET_NAME)/release/havms-init \
		$(TARGET_DIR)/init
	$(foreach bin,$(HAVMS_BINARIES), \
		$(INSTALL) -D -m 0755 \
			$(@D)/target/$(RUSTC_TARGET_NAME)/release/$(bin) \
			$(TARGET_DIR)/usr/bin/$(bin)
	)
	$(INSTALL) -D -m 0644 $(@D)/image/modules.list \
		$(TARGET_DIR)/etc/havms/modules.list
	$(INSTALL) -D -m 0755 $(@D)/image/udhcpc.script \
		$(TARGET_DIR)/usr/share/udhcpc/default.script
endef

$(eval $(cargo-package))
