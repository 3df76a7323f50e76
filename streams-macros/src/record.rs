//! `#[record]`: serde derives plus the `Record` impl.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Item, ItemEnum, ItemStruct};

use crate::attrs::Errors;

pub fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let (namespace, avro) = record_args(args, &mut errors);
    let mut parsed: Item = match syn::parse2(item.clone()) {
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
    let avro = avro.map(|avro| {
        mirror_serde_names(&mut parsed);
        {
            use syn::spanned::Spanned;
            quote::quote_spanned! {avro.span()=> #[derive(::streams_core::__private::AvroSchema)] }
        }
    });
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
        #avro
        #parsed
        impl ::streams_core::__private::Record for #ident {}
        #faust
        #errors
    }
}

/// The arguments: `faust = "module.Class"` (the namespace Faust knows the record by) and
/// `avro` (derive the type's Avro schema).
fn record_args(args: TokenStream, errors: &mut Errors) -> (Option<syn::LitStr>, Option<syn::Path>) {
    if args.is_empty() {
        return (None, None);
    }
    let parser = syn::punctuated::Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated;
    let args = match syn::parse::Parser::parse2(parser, args) {
        Ok(args) => args,
        Err(error) => {
            errors.push(error);
            return (None, None);
        }
    };
    let (mut namespace, mut avro) = (None, None);
    for arg in args {
        match arg {
            syn::Meta::Path(path) if path.is_ident("avro") => {
                if avro.is_some() {
                    errors.spanned(&path, "`avro` is given twice");
                }
                avro = Some(path);
            }
            syn::Meta::NameValue(syn::MetaNameValue { path, value, .. }) if path.is_ident("faust") => match &value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(text),
                    ..
                }) if !text.value().is_empty() => {
                    if namespace.is_some() {
                        errors.spanned(&path, "`faust` is given twice");
                    }
                    namespace = Some(text.clone());
                }
                other => errors.spanned(
                    other,
                    "`faust` takes the Faust model's namespace as a string: its module and class, \"hit_counter.hitCount\"",
                ),
            },
            other => errors.spanned(
                other.path(),
                "unknown argument: #[record] takes `faust = \"module.Class\"` (the namespace of a Faust record) and \
                 `avro` (derive the type's Avro schema); for serde's options use serde attributes such as \
                 #[serde(rename_all = \"camelCase\")] on the item",
            ),
        }
    }
    (namespace, avro)
}

/// Gives the Avro schema derive the names serde uses: each `#[serde(rename = "..")]` of a
/// field or variant, `rename_all` and `skip`, become the same `#[avro(..)]`, so that the
/// record's Avro fields are its JSON fields. (Defaults are not mirrored: Avro's are JSON
/// values, given with `#[avro(default = "..")]`.)
fn mirror_serde_names(item: &mut Item) {
    fn mirrored(attrs: &[syn::Attribute], container: bool) -> Vec<syn::Attribute> {
        let mut out = Vec::new();
        for attr in attrs.iter().filter(|attr| attr.path().is_ident("serde")) {
            let _ = attr.parse_nested_meta(|meta| {
                let name = meta.path.get_ident().map(ToString::to_string).unwrap_or_default();
                match name.as_str() {
                    "rename" | "rename_all" => {
                        let value: syn::LitStr = meta.value()?.parse()?;
                        let key = if container && name == "rename" {
                            quote::format_ident!("name")
                        } else {
                            quote::format_ident!("{}", name)
                        };
                        out.push(syn::parse_quote!(#[avro(#key = #value)]));
                    }
                    // Only a field serde never writes nor reads is none of Avro's either.
                    "skip" if !container => {
                        out.push(syn::parse_quote!(#[avro(skip)]));
                    }
                    _ => {
                        // Other serde options (and their values) are serde's alone.
                        if meta.input.peek(syn::Token![=]) {
                            let _: syn::Expr = meta.value()?.parse()?;
                        } else if meta.input.peek(syn::token::Paren) {
                            let _ = meta.parse_nested_meta(|_| Ok(()));
                        }
                    }
                }
                Ok(())
            });
        }
        out
    }
    match item {
        Item::Struct(item) => {
            let extra = mirrored(&item.attrs, true);
            item.attrs.extend(extra);
            for field in item.fields.iter_mut() {
                let extra = mirrored(&field.attrs, false);
                field.attrs.extend(extra);
            }
        }
        Item::Enum(item) => {
            let extra = mirrored(&item.attrs, true);
            item.attrs.extend(extra);
            for variant in item.variants.iter_mut() {
                let extra = mirrored(&variant.attrs, false).into_iter().filter(|attr| {
                    attr.parse_args::<syn::MetaNameValue>()
                        .is_ok_and(|meta| meta.path.is_ident("rename"))
                });
                variant.attrs.extend(extra.collect::<Vec<_>>());
            }
        }
        _ => {}
    }
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
