"""The one exception type for mistakes a user can make (bad path, wrong shape, unknown key)."""


class UserError(Exception):
    """An error the user can fix; the CLI prints its one-sentence message and exits with code 2.

    The message names the file or key involved and says how to fix it.
    """
