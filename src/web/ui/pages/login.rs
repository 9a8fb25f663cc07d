//! The login page: an operator token, or a name and password when `[ui] users` is set.
//! No inline style, inline script or `on…=` handler may ever be written here (the Content
//! Security Policy refuses them): styles are classes in [`super::CSS`], behaviour is in
//! [`super::LIVE_JS`].

use maud::{Markup, html};

use super::layout;

/// The login page; `problem` is shown above the form after a failed attempt. With `users`,
/// a second form takes a name and password.
pub fn login(next: &str, problem: Option<&str>, users: bool) -> Markup {
    layout(
        "Log in",
        None,
        html! {
            h1 { "Log in" }
            @if let Some(problem) = problem {
                p.error role="alert" { (problem) }
            }
            form method="post" action="/login" {
                input type="hidden" name="next" value=(next);
                p {
                    label for="token" { "Operator token" }
                    br;
                    input #token type="password" name="token" autocomplete="current-password" required size="48";
                }
                button type="submit" { "Log in" }
            }
            p.muted {
                "The controller printed a token on its first start (also in "
                code { "fleet-data/operator-token" }
                "); make another with "
                code { "fleet token create" }
                "."
            }
            @if users {
                h2 { "Or with a name and password" }
                form method="post" action="/login" {
                    input type="hidden" name="next" value=(next);
                    p {
                        label for="user" { "Name" }
                        br;
                        input #user type="text" name="user" autocomplete="username" required size="24";
                    }
                    p {
                        label for="password" { "Password" }
                        br;
                        input #password type="password" name="password" autocomplete="current-password" required size="24";
                    }
                    button type="submit" { "Log in with password" }
                }
            }
        },
    )
}
