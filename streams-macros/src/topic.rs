//! `#[topic]` on a `const` declaration of a `Topic`: the topic's name is declared once.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{ExprLit, Item, Lit, LitStr};

use crate::attrs::Errors;

/// Finds the first string literal of an initializer: the name in `Topic::new("name")…`.
struct FirstString(Option<LitStr>);

impl<'a> Visit<'a> for FirstString {
    fn visit_expr_lit(&mut self, lit: &'a ExprLit) {
        if let (None, Lit::Str(s)) = (&self.0, &lit.lit) {
            self.0 = Some(s.clone());
        }
    }
}

/// The topic name as identifier text, one-to-one (names that differ only in case, `-`, `_`
/// or `.` stay different): letters and digits as they are, `_` as `__`, `-` as `_h`, `.` as
/// `_d`, anything else as `_x{hex}_`.
fn ident_text(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            c if c.is_ascii_alphanumeric() => out.push(c),
            '_' => out.push_str("__"),
            '-' => out.push_str("_h"),
            '.' => out.push_str("_d"),
            other => out.push_str(&format!("_x{:x}_", u32::from(other))),
        }
    }
    out
}

pub fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    if !args.is_empty() {
        errors.spanned(
            &args,
            "#[topic] takes no arguments: the name is the string in `Topic::new(\"name\")`",
        );
    }
    let Ok(Item::Const(constant)) = syn::parse2::<Item>(item.clone()) else {
        errors.at(
            Span::call_site(),
            "#[topic] goes on a constant: `#[topic] const HITS: Topic<K, V> = Topic::new(\"hits\");`",
        );
        let errors = errors.into_compile_errors();
        return quote! { #item #errors };
    };
    let mut finder = FirstString(None);
    finder.visit_expr(&constant.expr);
    let Some(name) = finder.0 else {
        errors.spanned(
            &constant.expr,
            "#[topic] needs the topic's name as a string literal: `Topic::new(\"hits\")`",
        );
        let errors = errors.into_compile_errors();
        return quote! { #constant #errors };
    };
    let marker = format_ident!(
        "topic_named_{}_is_declared_twice",
        ident_text(&name.value()),
        span = name.span()
    );
    let errors = errors.into_compile_errors();
    let ident = &constant.ident;
    let check = quote_spanned! {constant.ty.span()=>
        const _: () = {
            fn __streams_declared_topic<K, V>(_: &::streams_core::__private::Topic<K, V>) {}
            #[allow(dead_code)]
            fn __streams_check() {
                __streams_declared_topic(&#ident);
            }
        };
    };
    quote! {
        #constant
        #[doc(hidden)]
        #[allow(non_upper_case_globals, dead_code)]
        const #marker: () = ();
        #check
        #errors
    }
}

#[cfg(test)]
mod tests {
    use super::ident_text;

    #[test]
    fn names_that_differ_stay_different() {
        let names = [
            "hit_count",
            "hit-count",
            "Hit_count",
            "hit.count",
            "hit__count",
            "hit_hcount",
            "hits",
        ];
        let texts: std::collections::BTreeSet<String> = names.iter().map(|n| ident_text(n)).collect();
        assert_eq!(texts.len(), names.len(), "{texts:?}");
        assert_eq!(ident_text("hits"), "hits");
    }
}
