"""The commented configuration ``centops-agent init`` writes."""


def config_template(*, trusted_root: str) -> str:
    """The commented configuration, pointing at ``trusted_root``."""
    return CONFIG_TEMPLATE.replace("{trusted_root}", trusted_root)


CONFIG_TEMPLATE = """\
# centops-agent configuration. Checked against schemas/agent-config.schema.json.
# Relative paths are relative to this file. No secret belongs here: tokens are
# read from an environment variable or a file named below.

client_id: client-001          # this client's name in telemetry (a-z, 0-9, -)
channel: stable                # the channel this client follows

repository:
  url: https://git.example.com/centops/fleet.git
  branch: main
  token:                       # where the repository token comes from
    env: CENTOPS_TOKEN         # ...or:  file: /etc/centops/git-token
  timeout_seconds: 60

trust:
  # Pinned Sigstore trust root: never refreshed from the network. This is
  # the public-good root shipped with the agent; a private deployment pins its own.
  trusted_root: {trusted_root}
  issuer: https://token.actions.githubusercontent.com
  identities:                  # exact signer identities (the sign workflow on main)
    - https://github.com/centops/fleet/.github/workflows/sign.yml@refs/heads/main
  clock_skew_seconds: 300

state_dir: /var/lib/centops-agent

files:
  root: /etc/centops/files     # file components are placed under here

scripts:
  timeout_seconds: 600

docker:
  host: unix:///var/run/docker.sock
  allowed_registries: [ghcr.io]
  # containers:                # how this client runs a component's image
  #   telemetry-agent:
  #     name: centops-telemetry
  #     restart_policy: unless-stopped
  #     health_timeout_seconds: 60

telemetry:
  results_branch:
    enabled: true
    branch: centops-results    # on the same repository
  # http:
  #   url: https://telemetry.example.com/events
  #   token: {file: /etc/centops/telemetry-token}

poll:
  frequency_seconds: 3600
  jitter_seconds: 300
  max_backoff_seconds: 21600

# The design note's blocks are accepted as written:
# update_notification:
#   method: polling
#   endpoint: https://git.example.com/centops/fleet.git
#   token_type: environment_token
#   frequency_seconds: 3600
# update_execution:
#   triggered_by: local_controller
#   order: defined_by_manifest
#   post_update_telemetry: true
"""
