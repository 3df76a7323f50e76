//! `#[record]`: serde derives plus the `Record` impl.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Item, ItemEnum, ItemStruct};

use crate::attrs::Errors;

pub fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let namespace = faust_namespace(args, &mut errors);
    let parsed: Item = match syn::parse2(item.clone()) {
        Ok(item) => item,
        Err(error) => return error.to_compile_error(),
    };
    let (ident, generics) = match &parsed {
        Item::Struct(ItemStruct { ident, generics, .. }) | Item::Enum(ItemEnum { ident, generics, .. }) => {
            (ident.clone(), generics.clone())
        }
        other => {
            errors.spanned(
                item_keyword(other),
                "#[record] supports structs (named fields, tuple or unit) and enums; \
                 for another kind of type, implement serde's traits and `streams_core::Record` by hand",
            );
            let errors = errors.into_compile_errors();
            return quote! { #item #errors };
        }
    };
    if !generics.params.is_empty() {
        errors.spanned(
            &generics,
            "#[record] does not support generic types; declare a concrete record type",
        );
        let errors = errors.into_compile_errors();
        return quote! { #parsed #errors };
    }
    let named = matches!(
        &parsed,
        Item::Struct(ItemStruct {
            fields: syn::Fields::Named(_),
            ..
        })
    );
    let namespace = match namespace {
        Some(namespace) if !named => {
            errors.spanned(
                &namespace,
                "`faust` is for structs with named fields: a Faust record is a JSON object of its fields",
            );
            None
        }
        other => other,
    };
    let errors = errors.into_compile_errors();
    let faust = namespace.map(|namespace| {
        quote! {
            impl ::streams_core::__private::FaustRecord for #ident {
                const NAMESPACE: &'static str = #namespace;
            }
        }
    });
    quote! {
        #[derive(::streams_core::__private::serde::Serialize, ::streams_core::__private::serde::Deserialize)]
        #[serde(crate = "::streams_core::__private::serde")]
        #parsed
        impl ::streams_core::__private::Record for #ident {}
        #faust
        #errors
    }
}

/// `faust = "module.Class"`, the only argument: the namespace Faust knows the record by.
fn faust_namespace(args: TokenStream, errors: &mut Errors) -> Option<syn::LitStr> {
    if args.is_empty() {
        return None;
    }
    let args = match crate::attrs::parse_args(args) {
        Ok(args) => args,
        Err(error) => {
            errors.push(error);
            return None;
        }
    };
    let mut namespace = None;
    for arg in args {
        if arg.key != "faust" {
            errors.spanned(
                &arg.key,
                "unknown argument: #[record] takes only `faust = \"module.Class\"` (the namespace of a Faust record); \
                 for serde's options use serde attributes such as #[serde(rename_all = \"camelCase\")] on the item",
            );
            continue;
        }
        match &arg.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(text),
                ..
            }) if !text.value().is_empty() => {
                if namespace.is_some() {
                    errors.spanned(&arg.key, "`faust` is given twice");
                }
                namespace = Some(text.clone());
            }
            other => errors.spanned(
                other,
                "`faust` takes the Faust model's namespace as a string: its module and class, \"hit_counter.hitCount\"",
            ),
        }
    }
    namespace
}

/// The token to point at when an item kind is unsupported: its keyword.
fn item_keyword(item: &Item) -> TokenStream {
    use quote::ToTokens;
    match item {
        Item::Fn(f) => f.sig.fn_token.to_token_stream(),
        Item::Type(t) => t.type_token.to_token_stream(),
        Item::Union(u) => u.union_token.to_token_stream(),
        Item::Trait(t) => t.trait_token.to_token_stream(),
        Item::Impl(i) => i.impl_token.to_token_stream(),
        Item::Const(c) => c.const_token.to_token_stream(),
        Item::Static(s) => s.static_token.to_token_stream(),
        Item::Mod(m) => m.mod_token.to_token_stream(),
        other => other.to_token_stream(),
    }
}
