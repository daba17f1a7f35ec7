# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""hypervisor.cpr.rollout_notify: posts one event of the rolling playbook to its webhooks, from the controller.
Its documentation is plugins/modules/rollout_notify.py."""

from __future__ import annotations

from ansible.module_utils.urls import open_url
from ansible.plugins.action import ActionBase

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import OptionError
from ansible_collections.hypervisor.cpr.plugins.module_utils._rollout_notify import ARGUMENT_SPEC, send, targets


class ActionModule(ActionBase):
    """Never fails for a receiver's sake: what cannot be sent is a warning."""

    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        _validation, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        try:
            receivers = targets(args["urls"], args["timeout"])
        except OptionError as exc:
            # A mistake in the playbook's variables, not a receiver that is down: said, and not sent.
            result.update(changed=False, sent=[], warnings=[str(exc)])
            return result
        sent, failures = send(receivers, args["event"], args["data"], open_url)
        result.update(changed=False, sent=sent)
        if failures:
            result["warnings"] = failures
        return result
