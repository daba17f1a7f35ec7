#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: rollout_notify
short_description: Tell webhooks what a rolling kernel update is doing
version_added: 0.2.0
description:
  - Posts one event of the playbook C(hypervisor.cpr.rolling_kernel_update) to every webhook of O(urls), as a
    Slack-compatible payload (a C(text) field, which Slack, Mattermost and Rocket.Chat incoming webhooks read) or as a
    generic JSON document (C(event), C(run_id), C(text), C(sent_at) and C(data)).
  - Runs on the controller (an action plugin). A notification that cannot be sent (a receiver down, an error status, a
    timeout, a URL that is not one) is a warning that names the receiver by its scheme, host and port only, never a
    failure of the task; webhook paths often carry a token and are never shown.
author:
  - hypervisor.cpr maintainers (@hypervisor-cpr)
extends_documentation_fragment:
  - hypervisor.cpr.attributes
options:
  urls:
    description:
      - The webhooks. A list of URLs or of dictionaries with C(url) and optionally C(format) (V(json), the default, or
        V(slack)), C(headers), C(timeout) and C(validate_certs); or one string of URLs separated by commas or spaces,
        as an AWX survey gives it. A URL may begin with its format, as in V(slack:https://hooks.example.com/T0/B0/x).
    type: raw
    required: true
  event:
    description:
      - V(started) (after the preflight), V(held) (a gate holds a batch), V(host_updated) and V(host_failed) (after each
        host's update), V(stopped) (a window, a gate or failures stopped the rollout), V(finished).
    type: str
    required: true
    choices: [started, held, host_updated, host_failed, stopped, finished]
  data:
    description:
      - What the text says and the JSON payload carries. V(started) reads C(run_id), C(hosts), C(needing), C(serial),
        C(window); V(held) C(batch), C(batch_hosts), C(blockers), C(until); the host events a host's entry of the fleet
        summary (C(host), C(kernel_before), C(kernel_after), C(vms), C(blackout_seconds), C(batch), C(phase),
        C(error), C(still_saved)) with C(run_id); V(stopped) C(reason), C(hosts_left), C(report); V(finished)
        C(counts), C(vms), C(max_blackout_seconds), C(report).
    type: dict
    default: {}
  timeout:
    description: Seconds to wait for each receiver, where its entry does not say.
    type: float
    default: 10
attributes:
  check_mode:
    support: full
    details: Notifications are sent in check mode too; they change nothing of the hosts.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Tell the team that hv01 is done
  hypervisor.cpr.rollout_notify:
    urls:
      - slack:https://hooks.slack.com/services/T000/B000/XXXX
      - url: https://events.example.com/hooks/rollouts
        headers:
          Authorization: "Bearer {{ events_token }}"
    event: host_updated
    data: "{{ {'run_id': '4711'} | combine(groups['hypervisors'] | map('extract', hostvars)
              | map('hypervisor.cpr.fleet_entry') | selectattr('host', 'eq', 'hv01') | first) }}"
"""

RETURN = r"""
sent:
  description: The receivers that took the notification, each with C(url) (scheme, host and port), C(format) and C(status).
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hypervisor.cpr.plugins.module_utils._rollout_notify import ARGUMENT_SPEC


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    module.fail_json(msg="hypervisor.cpr.rollout_notify runs on the controller, as an action plugin: "
                         "call it as hypervisor.cpr.rollout_notify, not as a module of a host.")


if __name__ == "__main__":
    main()
